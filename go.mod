module github.com/graceful-shim/graceful

go 1.26.0

require (
	github.com/pelletier/go-toml/v2 v2.4.3 // indirect
	golang.org/x/sys v0.49.0 // indirect
)
