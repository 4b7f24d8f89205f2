package shapes_test

import (
	"context"
	"database/sql"

	"github.com/jackc/pgx/v5"
)

// pgTitles reads every todo's title by id from PostgreSQL.
func pgTitles(dsn string) func() (map[string]string, error) {
	return func() (map[string]string, error) {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return nil, err
		}
		defer conn.Close(ctx)
		rows, err := conn.Query(ctx, `SELECT todoId, title FROM todos`)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		return titlesOf(rows)
	}
}

// sqliteTitles reads every todo's title by id from an SQLite file.
func sqliteTitles(path string) func() (map[string]string, error) {
	return func() (map[string]string, error) {
		db, err := sql.Open("sqlite", path)
		if err != nil {
			return nil, err
		}
		defer db.Close()
		rows, err := db.Query(`SELECT todoId, title FROM todos`)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		return titlesOf(rows)
	}
}

// titlesOf reads (todoId, title) rows of either driver into a map.
func titlesOf(rows interface {
	Next() bool
	Scan(...any) error
	Err() error
}) (map[string]string, error) {
	out := map[string]string{}
	for rows.Next() {
		var id, title string
		if err := rows.Scan(&id, &title); err != nil {
			return nil, err
		}
		out[id] = title
	}
	return out, rows.Err()
}

func sqliteExec(path, ddl string) error {
	db, err := sql.Open("sqlite", path)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.Exec(ddl)
	return err
}
