package shapes_test

import (
	"testing"

	"github.com/hypersync/hypersync/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
