package shapes_test

import (
	"context"

	"github.com/jackc/pgx/v5"
)

type dbReader struct{ conn *pgx.Conn }

func pgxConnect(dsn string) (*dbReader, error) {
	c, err := pgx.Connect(context.Background(), dsn)
	return &dbReader{c}, err
}

func (r *dbReader) close() { r.conn.Close(context.Background()) }

// titles returns every todo's title by id.
func (r *dbReader) titles() (map[string]string, error) {
	rows, err := r.conn.Query(context.Background(), `SELECT todoId, title FROM todos`)
	if err != nil {
		return nil, err
	}
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
