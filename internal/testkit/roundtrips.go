package testkit

import (
	"context"
	"net"
	"sync/atomic"

	"github.com/hypersync/hypersync/shapes"
)

// OpenCountingRoundTrips opens dsn with connections that count how many
// times the client sends after having read: one count per round trip.
func OpenCountingRoundTrips(dsn string) (*shapes.Database, func() int64, error) {
	var turns atomic.Int64
	dialer := &net.Dialer{}
	db, err := shapes.Open(dsn, shapes.Options{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &turnConn{Conn: c, turns: &turns}, nil
	}})
	return db, turns.Load, err
}

type turnConn struct {
	net.Conn
	turns   *atomic.Int64
	writing bool
}

func (c *turnConn) Write(b []byte) (int, error) {
	if !c.writing {
		c.writing = true
		c.turns.Add(1)
	}
	return c.Conn.Write(b)
}

func (c *turnConn) Read(b []byte) (int, error) {
	c.writing = false
	return c.Conn.Read(b)
}
