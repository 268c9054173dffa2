package stack

import (
	"fmt"
	"strings"
	"testing"
)

// NameFor is a name for the n-th object (pod, container) that a test creates: the test's name
// lowercased, with "-" for "/" and "_", then n.
func NameFor(tb testing.TB, n int64) string {
	return fmt.Sprintf("%s-%d", strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(tb.Name())), n)
}
