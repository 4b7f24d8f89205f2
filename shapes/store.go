package shapes

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/hypersync/hypersync/internal/codes"
)

// Store serves the shapes of one configuration from one Database. It holds
// the policy of a push: validate each change against its shape, plan the
// rows into statements, have the driver write them, and when the database
// refuses a value, write the push again one change at a time so that only
// the changes at fault are rejected.
type Store struct {
	db      *Database
	configs []ShapeConfig
	logger  *zap.Logger

	// MaxMembers bounds the members of a scope (DefaultMaxMembers when 0).
	// Set it before the first request.
	MaxMembers int
	// MaxScopesPerUser bounds the scopes of one membership table a user
	// is an active member of (DefaultMaxScopesPerUser when 0). Set it
	// before the first request.
	MaxScopesPerUser int

	// perUserStamps switches the fan-out off (tests only, see
	// export_test.go).
	perUserStamps bool

	// OnCommit, when set, is called after a push committed, with every
	// user whose cursor it moved (the pusher, and the members of the
	// scopes it wrote into) and its stamp: live sync pokes them. Set it
	// before the first request.
	OnCommit func(users []string, stamp time.Time)

	mu  sync.Mutex
	set *ShapeSet // nil until resolved, and again after a table changed
	// users counts the requests working on each set; a set that was
	// replaced is closed when its last request ends.
	users map[*ShapeSet]int
	// closed: Close was called; a request still arriving (a reload's
	// last) closes what it used when it ends.
	closed bool
}

// NewStore returns a Store for cfgs. It does not touch the database: call
// Check to resolve the shapes now, or let the first request do it.
func NewStore(db *Database, cfgs []ShapeConfig, logger *zap.Logger) (*Store, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	if err := ValidateShapes(cfgs); err != nil {
		return nil, err
	}
	return &Store{db: db, configs: cfgs, logger: logger}, nil
}

// ValidateShapes checks a configuration's shapes on their own and against
// each other, without a database.
func ValidateShapes(cfgs []ShapeConfig) error {
	seen := map[string]bool{}
	for _, c := range cfgs {
		if err := c.Validate(); err != nil {
			return err
		}
		if seen[c.Key] {
			return fmt.Errorf("shape %q is configured twice", c.Key)
		}
		seen[c.Key] = true
	}
	return validateSharing(cfgs)
}

// Known returns the configured shape key equal to key, and whether there
// is one. The returned string is the configuration's own, not key, so
// that it can outlive a request whose body key points into.
func (s *Store) Known(key string) (string, bool) {
	for _, c := range s.configs {
		if c.Key == key {
			return c.Key, true
		}
	}
	return "", false
}

// Database returns the database the store uses.
func (s *Store) Database() *Database { return s.db }

// Check resolves every shape against its table, creating tables where a
// shape asks for it. A mismatch is a *SchemaError; a database that cannot
// be reached is ErrUnavailable.
func (s *Store) Check(ctx context.Context) error {
	_, release, err := s.shapes(ctx)
	if err == nil {
		release()
	}
	return err
}

// Shapes returns the resolved shapes in configuration order, resolving
// them first if needed.
func (s *Store) Shapes(ctx context.Context) ([]*Shape, error) {
	set, release, err := s.shapes(ctx)
	if err != nil {
		return nil, err
	}
	release()
	return set.Shapes, nil
}

// shapes returns the resolved shapes as one value, and the function to
// call when the request is done with them. Every request works on the set
// it got here, and on its statements: a table change that makes the store
// check again replaces the set, and never changes one a request holds.
func (s *Store) shapes(ctx context.Context) (*ShapeSet, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.set == nil {
		set, err := s.resolve(ctx)
		if err != nil {
			return nil, nil, err
		}
		s.set = set
	}
	set := s.set
	if s.users == nil {
		s.users = map[*ShapeSet]int{}
	}
	s.users[set]++
	return set, func() { s.release(set) }, nil
}

// release ends a request's use of set, and closes a replaced set that no
// request uses any more.
func (s *Store) release(set *ShapeSet) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users[set]--
	if s.users[set] == 0 {
		delete(s.users, set)
		if set != s.set || s.closed {
			set.close()
			if set == s.set {
				s.set = nil
			}
		}
	}
}

func (s *Store) resolve(ctx context.Context) (*ShapeSet, error) {
	d, dl := s.db.d, s.db.dialect
	if err := d.DDL(ctx, dl.CursorDDL); err != nil {
		return nil, fmt.Errorf("creating the cursor table %s: %w", CursorTable, err)
	}
	if err := d.DDL(ctx, dl.TrustDDL...); err != nil {
		return nil, fmt.Errorf("creating the tables %s, %s and %s: %w", KeysTable, RejectionsTable, ErasedTable, err)
	}
	for _, cfg := range s.configs {
		if cfg.Share != nil {
			if err := d.DDL(ctx, dl.SharingDDL...); err != nil {
				return nil, fmt.Errorf("creating the tables of shared shapes (%s, %s, %s, %s): %w", MovesTable, LeftTable, VersionsTable, ScopesTable, err)
			}
			break
		}
	}
	set := &ShapeSet{byKey: make(map[string]*Shape, len(s.configs))}
	infos := map[*Shape]*TableInfo{}
	newTables := map[*Shape]bool{}
	warned := map[*Membership]bool{}
	for _, cfg := range s.configs {
		cfg = cfg.WithDefaults()
		schema, table, _ := SplitTableName(cfg.Table)
		info, err := d.Inspect(ctx, schema, table)
		if err != nil {
			return nil, fmt.Errorf("shape %q: reading table %s: %w", cfg.Key, cfg.Table, err)
		}
		created := false
		if info == nil && cfg.CreateTable {
			created = true
			if err := d.DDL(ctx, CreateTableSQL(cfg, dl)...); err != nil {
				return nil, fmt.Errorf("shape %q: creating table %s: %w", cfg.Key, cfg.Table, err)
			}
			s.logger.Info("created table", zap.String("shape", cfg.Key), zap.String("table", cfg.Table))
			if info, err = d.Inspect(ctx, schema, table); err != nil {
				return nil, fmt.Errorf("shape %q: reading table %s: %w", cfg.Key, cfg.Table, err)
			}
		}
		sh, err := Resolve(cfg, info)
		if err != nil {
			return nil, err
		}
		if created {
			newTables[sh] = true
		}
		set.byKey[cfg.Key] = sh
		set.Shapes = append(set.Shapes, sh)
		infos[sh] = info
	}
	inspect := func(schema, table string) (*TableInfo, error) { return d.Inspect(ctx, schema, table) }
	if err := resolveSharing(set, s.configs, inspect, infos); err != nil {
		return nil, err
	}
	backfilled := map[*Membership]bool{}
	for _, sh := range set.Shapes {
		if m := sh.Members(); m != nil && m.Tomb != nil && !backfilled[m] {
			backfilled[m] = true
			if err := d.DDL(ctx, dl.LeftBackfill(m)); err != nil {
				return nil, fmt.Errorf("recording the removals of %s in %s: %w", m.QualifiedName(), LeftTable, err)
			}
		}
	}
	for _, sh := range set.Shapes {
		stamping, markers := dl.Stamping(sh.StampTarget())
		sh.Stamped = stamped(infos[sh].Stamps, markers)
		if !sh.Stamped && newTables[sh] && sh.share != nil {
			// a shared table's objects need its membership table, known
			// only now (CreateTableSQL leaves them out)
			if err := d.DDL(ctx, stamping...); err != nil {
				return nil, fmt.Errorf("shape %q: creating the stamping trigger: %w", sh.Config.Key, err)
			}
			sh.Stamped = true
		}
		if !sh.SyncIndex {
			s.logger.Warn("no index leads with the user and sync-stamp columns; pulls will scan the table",
				zap.String("shape", sh.Config.Key), zap.String("create_index", IndexSQL(sh)+";"))
		}
		if !sh.Stamped {
			s.logger.Warn("the table has no current stamping trigger; rows written outside hypersync (psql, a backend job) will not reach devices",
				zap.String("shape", sh.Config.Key), zap.String("create_trigger", strings.Join(stamping, ";\n")+";"))
		}
		sc := sh.share
		if sc == nil {
			continue
		}
		if !sc.ScopeIndex {
			s.logger.Warn("no index leads with the scope and sync-stamp columns; pulls of shared rows will scan the table",
				zap.String("shape", sh.Config.Key), zap.String("create_index", ScopeIndexSQL(sh)+";"))
		}
		if m := sc.Members; m.Shape == nil && !warned[m] {
			warned[m] = true
			stamping, markers := dl.Stamping(m.StampTarget())
			if !stamped(m.Stamps, markers) {
				s.logger.Warn("the membership table has no current stamping trigger; memberships written by the app's backend will not reach devices in order",
					zap.String("table", m.QualifiedName()), zap.String("create_trigger", strings.Join(stamping, ";\n")+";"))
			}
		}
	}
	return set, nil
}

// recheckOn forgets set when err says a table changed, so that the next
// request checks the tables again and the store recovers once the table is
// right, without a restart. A set that was already replaced stays so.
func (s *Store) recheckOn(set *ShapeSet, err error) {
	if !errors.Is(err, ErrSchemaChanged) {
		return
	}
	s.mu.Lock()
	if set != nil && s.set == set {
		// Closed by release, once no request runs on it.
		s.set = nil
	}
	s.mu.Unlock()
}

// Close releases the statements drivers cached for the store. Call it
// when no request uses the store any more.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.set != nil && s.users[s.set] == 0 {
		s.set.close()
		s.set = nil
	}
}

// Push applies changes for user and sets results[i] to the outcome of
// changes[i]. A change whose result is already Rejected is skipped, so the
// caller can reject changes before the store sees them. A change that
// fails validation, or whose value the database refuses, is rejected
// alone. The error is set only when nothing could be done
// (ErrUnavailable, or a schema problem). Every change reported accepted
// was committed before Push returns. It returns the sync stamp written,
// zero when nothing was written.
func (s *Store) Push(ctx context.Context, user string, changes []Change, results []Result) (time.Time, error) {
	if len(results) != len(changes) {
		return time.Time{}, fmt.Errorf("push: %d results for %d changes", len(results), len(changes))
	}
	set, release, err := s.shapes(ctx)
	if err != nil {
		return time.Time{}, err
	}
	defer release()
	rows := prepare(set, changes, results)
	if c := s.logger.Check(zap.DebugLevel, "payload fields ignored"); c != nil {
		extra := 0
		for _, r := range rows {
			extra += r.shape.ExtraFields(changes[r.Index].Payload)
		}
		if extra > 0 {
			c.Write(zap.String("user", user), zap.Int("fields", extra))
		}
	}
	if len(rows) == 0 {
		// nothing to write, so no statement of the push checks the
		// block: an erased user is refused all the same, and learns
		// nothing of what would have been refused
		erased, err := s.Erased(ctx, user)
		if err == nil && erased {
			err = ErrErased
		}
		return time.Time{}, err
	}
	block, err := s.blockHash(ctx, user)
	if err != nil {
		return time.Time{}, err
	}
	for _, r := range rows {
		if r.shape.share != nil {
			stamp, users, err := s.pushShared(ctx, set, user, block, rows, results)
			if err != nil || !anyApplied(results) {
				return time.Time{}, err
			}
			if s.OnCommit != nil && !stamp.IsZero() {
				s.OnCommit(users, stamp)
			}
			return stamp, nil
		}
	}
	w := Write{User: user, Groups: plan(rows, true, false, results), Block: block}
	stamp, err := s.db.d.Write(ctx, w)
	if errors.Is(err, ErrRefused) {
		// The fast path folds changes together and fails as a whole, so
		// write the push again change by change, in updatedAt order, and
		// reject only the changes the database refuses.
		for _, r := range rows {
			results[r.Index] = Result{}
		}
		w = Write{User: user, Groups: plan(rows, false, true, results), Isolated: true, Block: block}
		stamp, err = s.db.d.Write(ctx, w)
	}
	if err != nil {
		s.recheckOn(set, err)
		return time.Time{}, err
	}
	for _, g := range w.Groups {
		for _, r := range g.Rows {
			results[r.Index] = resultOf(r)
		}
	}
	if !anyApplied(results) {
		// the driver stamped nobody: nothing changed for anyone
		return time.Time{}, nil
	}
	if s.OnCommit != nil && !stamp.IsZero() {
		s.OnCommit([]string{user}, stamp)
	}
	return stamp, nil
}

// anyApplied reports whether a push applied a change: only then did it
// stamp anyone, and only then is there anything to poke about.
func anyApplied(results []Result) bool {
	for _, r := range results {
		if r.Outcome == Applied {
			return true
		}
	}
	return false
}

// resultOf turns what the driver reported of a row into the change's
// outcome.
func resultOf(r *Row) Result {
	switch r.Outcome {
	case RowApplied:
		return Result{Outcome: Applied}
	case RowStale:
		return Result{Outcome: Stale}
	case RowForeign:
		return rejected(codes.UserMismatch, "the row with this key belongs to another user")
	}
	return rejected(codes.InvalidPayload, "%s", r.Refusal)
}

// Cursor returns the user's sync stamp: what their next pull would hand
// out as syncedAt; zero when they have none.
func (s *Store) Cursor(ctx context.Context, user string) (time.Time, error) {
	c, err := s.db.d.Cursors(ctx, []string{user})
	return c[user], err
}

// Pull streams the user's rows written after since. With limit > 0 it
// stops after about limit rows: it may send more, but never splits the rows
// that one push stamped alike, so a page boundary never skips a row.
func (s *Store) Pull(ctx context.Context, user string, since time.Time, limit int, emit func(PulledRow) error) (PullResult, error) {
	set, release, err := s.shapes(ctx)
	if err != nil {
		return PullResult{}, err
	}
	defer release()
	block, err := s.blockHash(ctx, user)
	if err != nil {
		return PullResult{}, err
	}
	res, err := s.db.d.Pull(ctx, PullQuery{User: user, Since: since, Limit: limit, Shapes: set, Block: block}, emit)
	s.recheckOn(set, err)
	return res, err
}
