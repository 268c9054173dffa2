//go:build !amd64

package helper

import "errors"

// autoreap is only implemented for amd64: elsewhere init's children stay zombies until the
// kernel's zap reaps them, as without it.
type autoreap struct{ restored bool }

// autoreapImplemented: init is never followed to its exit syscall here.
const autoreapImplemented = false

func canAutoreap(syscallInfo) bool { return false }

func isExitSyscall(syscallInfo) bool { return false }

func beginAutoreap(int) (*autoreap, error) {
	return nil, errors.New("not implemented on this architecture")
}

func (*autoreap) finish() error { return nil }
