package shapes

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"sync"
	"time"
)

// Trust at the edges: what a user's devices are told about themselves.
//
//   - The cursor cookie binds a pull's lastPull to the user it was handed
//     to: a keyed hash of the user id (never the id itself), which the
//     handler sets on every pull answer and checks on the next pull.
//   - The record of refused changes keeps, per user, the newest refusals,
//     one entry per changeId, so that a user (and the operator) can find
//     out why a change never lands: the 1.0.0 client keeps a refused
//     change in its queue and ignores why.

// The tables hypersync keeps for them (Dialect.TrustDDL).
const (
	// KeysTable holds the database's secrets, one per name, made at
	// random when first asked for.
	KeysTable = "hypersync_keys"
	// RejectionsTable holds the record of refused changes.
	RejectionsTable = "hypersync_rejections"
	// ErasedTable holds the users the operator erased, by a keyed hash of
	// their id (never the id itself): their requests answer 403.
	ErasedTable = "hypersync_erased"
)

// DefaultKeepRejections is how many refused changes the record keeps per
// user.
const DefaultKeepRejections = 100

// Rejection is one refused change, as the record keeps it: one entry per
// changeId, first refused At, last refused Last, Times refused in all (the
// client sends a refused change again at every sync).
type Rejection struct {
	ChangeID string
	Shape    string
	// Key is the change's key fields as a JSON object; nil when the
	// change named no shape hypersync knows.
	Key            json.RawMessage
	Error, Message string
	At, Last       time.Time
	Times          int
}

// secrets caches a database's secrets by name.
type secrets struct {
	mu sync.Mutex
	m  map[string][]byte
}

// secret returns the database's secret named name, reading (or making)
// it once.
func (db *Database) secret(ctx context.Context, name string) ([]byte, error) {
	db.keys.mu.Lock()
	defer db.keys.mu.Unlock()
	if k, ok := db.keys.m[name]; ok {
		return k, nil
	}
	s, err := db.d.Secret(ctx, name)
	if err != nil {
		return nil, err
	}
	if db.keys.m == nil {
		db.keys.m = map[string][]byte{}
	}
	db.keys.m[name] = []byte(s)
	return db.keys.m[name], nil
}

// keyedHash is the keyed hash of user under the secret named name: 22
// characters of base64url, which name nobody without the secret.
func (db *Database) keyedHash(ctx context.Context, name, user string) (string, error) {
	k, err := db.secret(ctx, name)
	if err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, k)
	m.Write([]byte(user))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16]), nil
}

// CursorTag is the value of the cursor cookie of user.
func (s *Store) CursorTag(ctx context.Context, user string) (string, error) {
	if err := s.ready(ctx); err != nil {
		return "", err
	}
	return s.db.keyedHash(ctx, "cursor", user)
}

// ready makes sure the store has checked its tables, and made its own,
// before it reads or writes them outside a push or pull.
func (s *Store) ready(ctx context.Context) error {
	_, release, err := s.shapes(ctx)
	if err == nil {
		release()
	}
	return err
}

// KeyOf returns the key fields of a change's payload as a JSON object, by
// the configuration of its shape; nil for a shape that is not configured.
func (s *Store) KeyOf(shape string, p Payload) json.RawMessage {
	for _, c := range s.configs {
		if c.Key != shape {
			continue
		}
		b := []byte{'{'}
		for _, f := range c.KeyFields {
			raw, ok := p.Get(f)
			if !ok {
				continue
			}
			if len(b) > 1 {
				b = append(b, ',')
			}
			b = append(b, jsonQuote(f)...)
			b = append(b, ':')
			b = append(b, raw...)
		}
		return append(b, '}')
	}
	return nil
}

// RecordRejections adds refusals to the user's record, and keeps its
// newest keep entries. A changeId refused before has its entry updated:
// last, times, and the newest reason. An erased user's refusals are not
// kept: erasure deleted their record.
func (s *Store) RecordRejections(ctx context.Context, user string, recs []Rejection, keep int) error {
	if len(recs) == 0 || keep <= 0 {
		return nil
	}
	if erased, err := s.Erased(ctx, user); err != nil || erased {
		return err
	}
	if len(recs) > keep {
		// all of this push's are as new: any keep of them are the newest
		recs = recs[len(recs)-keep:]
	}
	return s.db.d.RecordRejections(ctx, user, recs, keep)
}

// blockHash is the keyed hash under which an erased user is blocked.
func (s *Store) blockHash(ctx context.Context, user string) (string, error) {
	return s.db.keyedHash(ctx, "erased", user)
}

// Erased reports whether the operator erased user. Pushes and pulls check
// it in their own statements (Write.Block, PullQuery.Block); this is for
// the requests that have none, like opening a stream.
func (s *Store) Erased(ctx context.Context, user string) (bool, error) {
	if err := s.ready(ctx); err != nil {
		return false, err
	}
	h, err := s.blockHash(ctx, user)
	if err != nil {
		return false, err
	}
	return s.db.d.Erased(ctx, h)
}

// Unblock lifts the block erase put on user, and reports whether there
// was one.
func (s *Store) Unblock(ctx context.Context, user string) (bool, error) {
	if err := s.ready(ctx); err != nil {
		return false, err
	}
	h, err := s.blockHash(ctx, user)
	if err != nil {
		return false, err
	}
	return s.db.d.Unblock(ctx, h, user)
}

// Rejections returns the user's record, newest first.
func (s *Store) Rejections(ctx context.Context, user string) ([]Rejection, error) {
	if err := s.ready(ctx); err != nil {
		return nil, err
	}
	return s.db.d.Rejections(ctx, user)
}
