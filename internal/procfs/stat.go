package procfs

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// StatFields returns the fields of a /proc stat file after the command name (which may hold
// spaces and parentheses), so that fields[0] is field 3, the state.
func StatFields(path string) ([]string, bool) {
	stat, err := os.ReadFile(path)
	if err != nil {
		return nil, false
	}
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return nil, false
	}
	return strings.Fields(string(stat[end+1:])), true
}

// NSInode returns the inode of the namespace file at path. It reads the link ("pid:[4026531836]"),
// which costs about half a stat through procfs: this is the per-process cost of every scan.
func NSInode(path string) (uint64, error) {
	var buf [64]byte
	n, err := unix.Readlink(path, buf[:])
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	link := buf[:n]
	open, end := bytes.IndexByte(link, '['), bytes.IndexByte(link, ']')
	if open < 0 || end <= open {
		return 0, fmt.Errorf("read %s: unexpected link %q", path, link)
	}
	ino, err := strconv.ParseUint(string(link[open+1:end]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return ino, nil
}
