package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/hypersync/hypersync/shapes"
	_ "github.com/hypersync/hypersync/shapes/postgres" // registers postgres:// DSNs
)

// outsideRows is the size of the direct bulk insert measured with and
// without the stamping trigger.
const outsideRows = 10000

// measureOutsideWrites times one direct INSERT … SELECT of outsideRows rows
// into a copy of the README's table that has hypersync's stamping trigger,
// and into one that has none, paired per run in alternating order. It
// returns the milliseconds with the trigger and without, per run.
func measureOutsideWrites(ctx context.Context, pool *pgxpool.Pool, dsn string) (with, without []float64, err error) {
	table := func(name string) string {
		return strings.Replace(strings.Replace(ddl, "todos", name, -1), "todos_sync", name+"_sync", -1)
	}
	for _, name := range []string{"stamped", "plain"} {
		if _, err := pool.Exec(ctx, table(name)); err != nil {
			return nil, nil, fmt.Errorf("creating %s: %w", name, err)
		}
	}
	// The stamping objects, as caddy hypersync check prints them.
	db, err := shapes.Open(dsn, shapes.Options{})
	if err != nil {
		return nil, nil, err
	}
	defer db.Destruct()
	cfg := shapes.ShapeConfig{Key: "stamped", KeyFields: []string{"todoId"}, Fields: []string{"title", "done", "deleted"}}
	st, err := shapes.NewStore(db, []shapes.ShapeConfig{cfg}, nil)
	if err != nil {
		return nil, nil, err
	}
	if err := st.Check(ctx); err != nil { // makes hypersync_cursors
		return nil, nil, err
	}
	d, err := db.Diagnose(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	for _, stmt := range d.Fix {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			return nil, nil, fmt.Errorf("installing the stamping trigger: %w", err)
		}
	}
	insert := func(name string, r int) (float64, error) {
		start := time.Now()
		_, err := pool.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (todoId, title, userId)
			SELECT 'r%d-' || g, 'a row from a backend job ' || g, 'job' || (g %% 10) FROM generate_series(1, %d) AS g`, name, r, outsideRows))
		return float64(time.Since(start).Microseconds()) / 1000, err
	}
	for r := 0; r < *runs; r++ {
		first, second := "stamped", "plain"
		if r%2 == 1 {
			first, second = second, first
		}
		a, err := insert(first, r)
		if err != nil {
			return nil, nil, err
		}
		b, err := insert(second, r)
		if err != nil {
			return nil, nil, err
		}
		if r%2 == 1 {
			a, b = b, a
		}
		with, without = append(with, a), append(without, b)
	}
	return with, without, nil
}
