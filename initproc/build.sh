#!/bin/sh
# build.sh OUT [VERSION [COMMIT]] builds graceful-init into OUT: static, so that it runs in any
# image, and stripped. The Makefile and the tests build it with this, and so with the same flags.
set -eu
out=$1
version=${2:-dev}
commit=${3:-unknown}
src=$(dirname "$0")/graceful-init.c
exec "${CC:-cc}" -std=gnu11 -static -Os -s -Wall -Wextra -Werror \
	-DVERSION="\"$version\"" -DCOMMIT="\"$commit\"" -o "$out" "$src"
