// Package live tells devices when to sync: a Server-Sent Events stream per
// device, on which a poke arrives when a write they can see commits. A
// poke carries no row data; the device answers it with an ordinary pull.
//
// One Broker per database keeps the open streams and delivers pokes to
// them: from pushes in this process (Publish), and, on PostgreSQL, from
// other instances and from the stamping triggers, through a Transport
// (package live/pgnotify). Files: broker.go the registry and delivery,
// stream.go the HTTP side, script.go the browser helper live.js.
package live

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Poke is a hint to sync for the users whose keys it names.
type Poke struct {
	// Keys are users' keys (Broker.Key).
	Keys []string `json:"u,omitempty"`
	// Stamp is the commit's sync stamp in Unix milliseconds (0 when not
	// known, as from a trigger): the event id a stream hands out.
	Stamp int64 `json:"s,omitempty"`
	// At is when the poke was published, in Unix microseconds, for the
	// commit-to-poke latency.
	At int64 `json:"t,omitempty"`
	// Origin is the publishing instance, which delivered it already.
	Origin string `json:"o,omitempty"`
	// Probe, when set, is a transport's check that its listener hears
	// what is sent through the database: it pokes nobody.
	Probe string `json:"p,omitempty"`
}

// Listener is what a transport reports to its broker while it runs.
type Listener struct {
	// Deliver hands over a poke from another instance or a trigger.
	Deliver func(Poke)
	// Resync is called after every (re)connect, when pokes may have
	// been missed.
	Resync func()
	// Status is called when the listener's state changes: nil when it
	// listens and hears what is sent through the database, else why not.
	Status func(err error)
}

// Transport carries pokes between instances on one database.
type Transport interface {
	// Secret returns the database's key for hashing user ids, shared by
	// every instance and by the stamping triggers.
	Secret(ctx context.Context) (string, error)
	// Run delivers pokes from other instances until ctx ends, reporting
	// to l.
	Run(ctx context.Context, l Listener)
	// Send publishes one batch of pokes, small enough for one message.
	Send(ctx context.Context, p Poke) error
}

// Observer receives the broker's measurements.
type Observer interface {
	Streams(n int)
	PokeSent(latency time.Duration)
	NotifyBatch()
	ListenerReconnect()
}

// Broker holds the open streams of one database's users.
type Broker struct {
	transport Transport
	logger    *zap.Logger
	observer  Observer
	origin    string
	secret    atomic.Pointer[string]
	// listenErr is why the listener does not work (nil: it does, or there
	// is no transport); started reports that the transport reported once.
	listenMu  sync.Mutex
	listenErr error
	started   bool
	keyed     atomic.Bool // the database's key was read

	mu      sync.Mutex
	streams map[string]map[*stream]struct{} // by user key
	total   int

	outMu   sync.Mutex
	out     map[string]struct{} // keys waiting to be sent to other instances
	outMax  int64
	outAt   int64
	outWake chan struct{}

	closing chan struct{} // closed when the process exits, or the broker is destroyed
	once    sync.Once
	cancel  context.CancelFunc
	done    sync.WaitGroup
	exiting func() bool
	cursors func(ctx context.Context, users []string) (map[string]time.Time, error)
}

// Options configure a broker.
type Options struct {
	// Transport, when set, carries pokes to and from other instances.
	Transport Transport
	Logger    *zap.Logger
	Observer  Observer
	// Exiting reports that the process is stopping for good: then every
	// stream is closed, so that a graceful shutdown does not wait on them.
	Exiting func() bool
	// Cursors reads users' sync stamps. After the listener (re)connects,
	// when pokes from other instances may have been missed, a stream is
	// poked only if its user's cursor moved past what it was told: a
	// stream is never poked for a write its user cannot see.
	Cursors func(ctx context.Context, users []string) (map[string]time.Time, error)
}

// NewBroker starts a broker.
func NewBroker(opts Options) *Broker {
	b := &Broker{transport: opts.Transport, logger: opts.Logger, observer: opts.Observer, exiting: opts.Exiting,
		streams: map[string]map[*stream]struct{}{}, out: map[string]struct{}{}, outWake: make(chan struct{}, 1),
		closing: make(chan struct{}), cursors: opts.Cursors}
	if b.logger == nil {
		b.logger = zap.NewNop()
	}
	var rnd [16]byte
	_, _ = rand.Read(rnd[:])
	b.origin = hex.EncodeToString(rnd[:8])
	local := hex.EncodeToString(rnd[8:])
	b.secret.Store(&local)
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	if b.transport != nil {
		b.done.Add(3)
		go func() { defer b.done.Done(); b.readSecret(ctx) }()
		go func() {
			defer b.done.Done()
			b.transport.Run(ctx, Listener{Deliver: b.deliver, Resync: func() { b.resync(ctx) }, Status: b.listenStatus})
		}()
		go func() { defer b.done.Done(); b.sendLoop(ctx) }()
	}
	if b.exiting != nil {
		b.done.Add(1)
		go func() { defer b.done.Done(); b.watchExit(ctx) }()
	}
	return b
}

// Destruct stops the broker and closes its streams (caddy.Destructor).
func (b *Broker) Destruct() error {
	b.once.Do(func() { close(b.closing) })
	b.cancel()
	b.done.Wait()
	return nil
}

// readSecret reads the database's key until it has it, with backoff: until
// then pokes from other instances and triggers match no stream here. Once
// read, the streams are caught up (resync).
func (b *Broker) readSecret(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		s, err := b.transport.Secret(ctx)
		if err == nil {
			b.setSecret(s)
			b.keyed.Store(true)
			b.resync(ctx)
			return
		}
		b.logger.Warn("live: reading the shared key; pokes from other instances miss this one's streams until it is read", zap.Error(err), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// watchExit closes every stream once the process is exiting: Caddy's
// default grace period is unlimited, and it would wait for them.
func (b *Broker) watchExit(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if b.exiting() {
				b.once.Do(func() { close(b.closing) })
				return
			}
		}
	}
}

// listenStatus records the listener's state, and logs each change once:
// a listener that keeps failing the same way is not logged again.
func (b *Broker) listenStatus(err error) {
	b.listenMu.Lock()
	defer b.listenMu.Unlock()
	was, started := b.listenErr, b.started
	b.listenErr, b.started = err, true
	switch {
	case err != nil && (was == nil || was.Error() != err.Error()):
		b.logger.Warn("live: pokes from other instances and from writes outside hypersync do not reach this instance", zap.Error(err))
	case err == nil && was != nil:
		b.logger.Info("live: the listener works again")
	case err == nil && !started:
		b.logger.Debug("live: listening")
	}
}

// Listening reports whether pokes from other instances reach this one:
// nil when they do (or there is no transport), else why not. Until the
// transport first reports, and the database's key is read, it says so.
func (b *Broker) Listening() error {
	if b.transport == nil {
		return nil
	}
	b.listenMu.Lock()
	defer b.listenMu.Unlock()
	switch {
	case !b.started:
		return errNotYetListening
	case b.listenErr != nil:
		return b.listenErr
	case !b.keyed.Load():
		return errNoKey
	}
	return nil
}

// Transported reports whether the broker has a transport to other
// instances.
func (b *Broker) Transported() bool { return b.transport != nil }

var (
	errNotYetListening = errors.New("the listener has not connected yet")
	errNoKey           = errors.New("the database's key for live pokes is not read yet")
)

// Key is the hashed id of a user, as pokes between instances carry it:
// any database role can LISTEN, so raw user ids never travel. The
// stamping triggers compute the same: left(md5(secret || user), 16).
func (b *Broker) Key(user string) string {
	return KeyOf(*b.secret.Load(), user)
}

// KeyOf is the key of user under the database's secret (Transport.Secret),
// for a process that pokes streams without a broker of its own (caddy
// hypersync erase).
func KeyOf(secret, user string) string {
	h := md5.Sum([]byte(secret + user))
	return hex.EncodeToString(h[:8])
}

// setSecret takes the database's key, and files the open streams under
// their keys by it.
func (b *Broker) setSecret(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if *b.secret.Load() == s {
		return
	}
	b.secret.Store(&s)
	streams := map[string]map[*stream]struct{}{}
	for _, set := range b.streams {
		for st := range set {
			st.key = KeyOf(s, st.user)
			if streams[st.key] == nil {
				streams[st.key] = map[*stream]struct{}{}
			}
			streams[st.key][st] = struct{}{}
		}
	}
	b.streams = streams
}

// Publish pokes users after a commit stamped stamp: their streams here at
// once, and the other instances' within a few milliseconds.
func (b *Broker) Publish(users []string, stamp time.Time) {
	keys := make([]string, len(users))
	for i, u := range users {
		keys[i] = b.Key(u)
	}
	p := Poke{Keys: keys, Stamp: stamp.UnixMilli(), At: time.Now().UnixMicro()}
	b.deliver(p)
	if b.transport == nil {
		return
	}
	b.outMu.Lock()
	for _, k := range keys {
		b.out[k] = struct{}{}
	}
	b.outMax = max(b.outMax, p.Stamp)
	if b.outAt == 0 {
		b.outAt = p.At
	}
	b.outMu.Unlock()
	select {
	case b.outWake <- struct{}{}:
	default:
	}
}

// KeysPerPoke is the most keys one poke carries: keys of 19 bytes in
// JSON, well under PostgreSQL's 8,000 bytes of a notification.
const KeysPerPoke = 300

// sendLoop sends what Publish gathered, after 10 milliseconds, in
// messages under PostgreSQL's 8,000 bytes: never inside a push's
// transaction, so that a full notification queue cannot fail a push.
func (b *Broker) sendLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.outWake:
		}
		time.Sleep(10 * time.Millisecond) // gather the pushes committing meanwhile: one notification for many
		b.outMu.Lock()
		keys := make([]string, 0, len(b.out))
		for k := range b.out {
			keys = append(keys, k)
		}
		stamp, at := b.outMax, b.outAt
		b.out, b.outMax, b.outAt = map[string]struct{}{}, 0, 0
		b.outMu.Unlock()
		for len(keys) > 0 {
			n := min(len(keys), KeysPerPoke)
			p := Poke{Keys: keys[:n], Stamp: stamp, At: at, Origin: b.origin}
			keys = keys[n:]
			if err := b.transport.Send(ctx, p); err != nil && ctx.Err() == nil {
				// keep them for the next send, a second on
				b.logger.Warn("live: sending pokes to other instances", zap.Error(err))
				b.outMu.Lock()
				for _, k := range p.Keys {
					b.out[k] = struct{}{}
				}
				for _, k := range keys {
					b.out[k] = struct{}{}
				}
				b.outMax, b.outAt = max(b.outMax, p.Stamp), p.At
				b.outMu.Unlock()
				keys = nil
				time.AfterFunc(time.Second, func() {
					select {
					case b.outWake <- struct{}{}:
					default:
					}
				})
			}
			if b.observer != nil {
				b.observer.NotifyBatch()
			}
		}
	}
}

// deliver pokes the local streams a poke names.
func (b *Broker) deliver(p Poke) {
	if p.Origin != "" && p.Origin == b.origin {
		return // delivered when it was published
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, k := range p.Keys {
		for s := range b.streams[k] {
			s.offer(p.Stamp, p.At)
		}
	}
}

// resync catches the local streams up after pokes may have been missed
// (the listener reconnected, or the database's key was just read): a
// stream is poked when its user's cursor is past every stamp it was told
// of, and left alone otherwise. Users are looked up in batches; a lookup
// that fails is tried again with backoff, a few times, and a stream is
// never poked on a guess: a missed poke costs a device its next poll, a
// poke for a write the user cannot see tells a stranger that a scope moved.
func (b *Broker) resync(ctx context.Context) {
	if b.cursors == nil {
		return
	}
	b.mu.Lock()
	byUser := map[string][]*stream{}
	for _, set := range b.streams {
		for s := range set {
			byUser[s.user] = append(byUser[s.user], s)
		}
	}
	b.mu.Unlock()
	users := make([]string, 0, len(byUser))
	for u := range byUser {
		users = append(users, u)
	}
	const batch = 1000
	for len(users) > 0 {
		n := min(len(users), batch)
		var cur map[string]time.Time
		var err error
		backoff := 100 * time.Millisecond
		for try := 0; try < 5 && ctx.Err() == nil; try++ {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			cur, err = b.cursors(cctx, users[:n])
			cancel()
			if err == nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff *= 2
		}
		if err != nil {
			b.logger.Warn("live: reading cursors to catch streams up after a reconnect; they sync at their next poll", zap.Error(err))
			return
		}
		now := time.Now().UnixMicro()
		for _, u := range users[:n] {
			c, ok := cur[u]
			if !ok {
				continue
			}
			for _, s := range byUser[u] {
				if ms := c.UnixMilli(); ms > s.known.Load() {
					s.offer(ms, now)
				}
			}
		}
		users = users[n:]
	}
}

// admission is why a stream was refused.
type admission int

const (
	admitted admission = iota
	tooManyStreams
	tooManyForUser
)

// instanceStreams counts the streams of the whole process, for
// max_streams, which is per instance, whatever the databases.
var instanceStreams atomic.Int64

// join registers a stream, within the limits.
func (b *Broker) join(s *stream, maxStreams, maxPerUser int) admission {
	b.mu.Lock()
	defer b.mu.Unlock()
	s.key = b.Key(s.user)
	if instanceStreams.Load() >= int64(maxStreams) {
		return tooManyStreams
	}
	set := b.streams[s.key]
	if len(set) >= maxPerUser {
		return tooManyForUser
	}
	if set == nil {
		set = map[*stream]struct{}{}
		b.streams[s.key] = set
	}
	set[s] = struct{}{}
	b.total++
	n := instanceStreams.Add(1)
	if b.observer != nil {
		b.observer.Streams(int(n))
	}
	return admitted
}

func (b *Broker) leave(s *stream) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if set := b.streams[s.key]; set != nil {
		delete(set, s)
		if len(set) == 0 {
			delete(b.streams, s.key)
		}
		b.total--
	}
	n := instanceStreams.Add(-1)
	if b.observer != nil {
		b.observer.Streams(int(n))
	}
}

// Open returns the number of open streams.
func (b *Broker) Open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.total
}

// stream is one open event stream: a one-slot mailbox, so that pokes
// coalesce and a slow client never holds up delivery to others.
type stream struct {
	user string
	// known is the newest stamp the client was told of, or is about to
	// be: resync pokes a stream only when its user's cursor is past it.
	known atomic.Int64

	key    string        // Key(user), guarded by the broker's mu
	wake   chan struct{} // capacity 1
	mu     sync.Mutex
	stamp  int64 // the newest stamp waiting
	at     int64 // when the oldest waiting poke was published
	queued atomic.Bool
}

func newStream(user string) *stream { return &stream{user: user, wake: make(chan struct{}, 1)} }

// offer leaves a poke in the mailbox, merged with one already there.
func (s *stream) offer(stamp, at int64) {
	s.tell(stamp)
	s.mu.Lock()
	s.stamp = max(s.stamp, stamp)
	if !s.queued.Load() || at < s.at {
		s.at = at
	}
	s.queued.Store(true)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// tell raises known to stamp.
func (s *stream) tell(stamp int64) {
	for k := s.known.Load(); stamp > k && !s.known.CompareAndSwap(k, stamp); k = s.known.Load() {
	}
}

// take empties the mailbox.
func (s *stream) take() (stamp, at int64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.queued.Load() {
		return 0, 0, false
	}
	stamp, at = s.stamp, s.at
	s.stamp, s.at = 0, 0
	s.queued.Store(false)
	return stamp, at, true
}
