package shapes_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The core knows no database: the database packages import it, so the
// compiler refuses the reverse, and this test refuses a driver reached
// any other way.
func TestCoreImportsNoDriver(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Skipf("go list: %v: %s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, driver := range []string{"github.com/jackc/", "modernc.org/", "database/sql", "/shapes/postgres", "/shapes/sqlite"} {
			if strings.Contains(dep, driver) {
				t.Errorf("package shapes depends on %s", dep)
			}
		}
	}
}
