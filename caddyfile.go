package hypersync

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/hypersync/hypersync/shapes"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("hypersync", parseCaddyfile)
	// Sync requests are answered before a site's file_server would be.
	httpcaddyfile.RegisterDirectiveOrder("hypersync", httpcaddyfile.Before, "file_server")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	hs := new(HyperSync)
	err := hs.UnmarshalCaddyfile(h.Dispenser)
	return hs, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	hypersync [<matcher>] {
//		database <dsn>                  # postgres://, postgresql:// or sqlite:<path>; {env.*} and {file.*} allowed;
//		                                # default sqlite:./hypersync.db
//		user_id <placeholder>           # default {http.auth.user.id}
//		max_batch <n>                   # most changes in one push; default 1000
//		max_body <size>                 # largest request body; default 16MB
//		timeout <duration>              # database time of a push, or the longest a pull may stall; default 10s
//		max_concurrent_pushes <n>       # pushes working on the database at once; default 8
//		max_concurrent_pulls <n>        # pulls working on the database at once; default 8
//		max_members <n>                 # most members of one scope of a shared shape; default 1000
//		max_scopes_per_user <n>         # most scopes of one membership table a user is a member of; default 1000
//		live on|off                     # live sync at …/events and …/live.js; default on
//		cursor_cookie on|off            # the cookie that ties a pull's lastPull to its user; default on
//		keep_rejections <n>             # refused changes kept per user for …/rejections; default 100, 0 keeps none
//		refusal_rate <n>                # refused changes per second a user's pushes may have; past it they wait, or 429; default 200, 0 no limit
//		heartbeat <duration>            # comment line on an idle stream; default 25s
//		max_streams <n>                 # event streams of this instance; default 10000; past it 503
//		max_streams_per_user <n>        # event streams of one user; default 16; past it 429
//		stream_max_age <duration>       # a stream is closed after this (80-100 %), and reconnects; default 10m
//		listen_database <dsn>           # a direct PostgreSQL session for LISTEN, when database is pooled
//		read_database <dsn>             # repeatable: a hot standby of database (PostgreSQL) that pulls run on
//		read_max_lag <duration>         # how long a pull waits for a standby to catch up before it reads the primary; default 2s
//		metrics off                     # no hypersync_* Prometheus metrics
//		shape <shapeKey> {              # repeatable
//			table <name>                # default: the shapeKey; may be schema.table
//			key <field>...              # required: the primary key or a unique constraint
//			fields <field>...           # default: every column but key and bookkeeping
//			user_column <column>        # default userId
//			updated_at_column <column>  # default updatedAt
//			synced_at_column <column>   # default lastSyncAt
//			create_table                # create the table if it is missing
//			field <name> <type>         # column type for create_table: text, integer, real, boolean, timestamp, json
//			share <field> via <table> [<member column>]
//			                            # rows are visible to the members of their scope, the value of <field>:
//			                            # the rows of <table> whose <field> column equals it; member column default userId
//			tombstone <field>           # the boolean deleted marker; default deleted, if the shape has it
//			scoped_at_column <column>   # shared shapes: when the row entered its scope; default scopedAt
//		}
//	}
func (h *HyperSync) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	file, line := d.File(), d.Line()
	readLine := 0 // the first read_database
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "database":
			if h.Database != "" {
				return d.Err("database given twice")
			}
			if !d.Args(&h.Database) || d.NextArg() {
				return d.ArgErr()
			}
			// A DSN from a placeholder is checked when the config loads.
			if !strings.Contains(h.Database, "{") {
				if err := shapes.CheckDSN(h.Database); err != nil {
					return d.WrapErr(err)
				}
			}
		case "user_id":
			if !d.Args(&h.UserID) || d.NextArg() {
				return d.ArgErr()
			}
			if err := checkUserID(h.UserID); err != nil {
				return d.WrapErr(err)
			}
		case "max_batch":
			if err := positiveInt(d, &h.MaxBatch); err != nil {
				return err
			}
		case "max_scopes_per_user":
			if err := positiveInt(d, &h.MaxScopesPerUser); err != nil {
				return err
			}
		case "max_members":
			if err := positiveInt(d, &h.MaxMembers); err != nil {
				return err
			}
		case "live":
			if err := onOff(d, &h.Live); err != nil {
				return err
			}
		case "cursor_cookie":
			if err := onOff(d, &h.CursorCookie); err != nil {
				return err
			}
		case "keep_rejections", "refusal_rate":
			opt := d.Val()
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				if opt == "refusal_rate" {
					return d.Errf("refusal_rate %q is not a whole number (0 sets no limit)", v)
				}
				return d.Errf("keep_rejections %q is not a whole number (0 keeps none)", v)
			}
			if opt == "refusal_rate" {
				h.RefusalRate = &n
			} else {
				h.KeepRejections = &n
			}
		case "heartbeat", "stream_max_age":
			opt := d.Val()
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("%s %q is not a positive duration such as 25s", opt, v)
			}
			if opt == "heartbeat" {
				h.Heartbeat = caddy.Duration(dur)
			} else {
				h.StreamMaxAge = caddy.Duration(dur)
			}
		case "max_streams":
			if err := positiveInt(d, &h.MaxStreams); err != nil {
				return err
			}
		case "max_streams_per_user":
			if err := positiveInt(d, &h.MaxStreamsPerUser); err != nil {
				return err
			}
		case "listen_database":
			if h.ListenDatabase != "" {
				return d.Err("listen_database given twice")
			}
			if !d.Args(&h.ListenDatabase) || d.NextArg() {
				return d.ArgErr()
			}
			if !strings.Contains(h.ListenDatabase, "{") && shapes.KindOf(h.ListenDatabase) != "postgres" {
				return d.Errf("listen_database %q is not a postgres:// DSN: only PostgreSQL carries pokes between instances", shapes.RedactDSN(h.ListenDatabase))
			}
		case "read_database":
			var dsn string
			if !d.Args(&dsn) || d.NextArg() {
				return d.ArgErr()
			}
			if !strings.Contains(dsn, "{") && shapes.KindOf(dsn) != "postgres" {
				return d.Errf("read_database %q is not a postgres:// DSN: pulls run on hot standbys of a PostgreSQL database, and SQLite has none", shapes.RedactDSN(dsn))
			}
			h.ReadDatabases = append(h.ReadDatabases, dsn)
			if readLine == 0 {
				readLine = d.Line()
			}
		case "read_max_lag":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("read_max_lag %q is not a positive duration such as 2s", v)
			}
			h.ReadMaxLag = caddy.Duration(dur)
		case "max_concurrent_pushes":
			if err := positiveInt(d, &h.MaxConcurrentPushes); err != nil {
				return err
			}
		case "max_concurrent_pulls":
			if err := positiveInt(d, &h.MaxConcurrentPulls); err != nil {
				return err
			}
		case "max_body":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(v)
			if err != nil || n == 0 || n > 1<<40 {
				return d.Errf("max_body %q is not a size such as 16MB", v)
			}
			h.MaxBody = int64(n)
		case "timeout":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("timeout %q is not a positive duration such as 10s", v)
			}
			h.Timeout = caddy.Duration(dur)
		case "metrics":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			switch v {
			case "off":
				h.DisableMetrics = true
			case "on":
				h.DisableMetrics = false
			default:
				return d.Errf("metrics takes on or off, not %q", v)
			}
		case "shape":
			s, err := unmarshalShape(d)
			if err != nil {
				return err
			}
			for _, other := range h.Shapes {
				if other.Key == s.Key {
					return d.Errf("shape %q is defined twice", s.Key)
				}
			}
			h.Shapes = append(h.Shapes, s)
		default:
			return d.Errf("unrecognized hypersync option %q", d.Val())
		}
	}
	if err := h.checkReadDatabases(); err != nil {
		return fmt.Errorf("%v, at %s:%d", err, file, readLine)
	}
	if len(h.Shapes) == 0 {
		return fmt.Errorf("hypersync needs at least one shape block, at %s:%d", file, line)
	}
	// what needs every shape: the shares' membership tables
	if err := shapes.ValidateShapes(h.Shapes); err != nil {
		return fmt.Errorf("%v, at %s:%d", err, file, line)
	}
	return nil
}

// positiveInt reads the option's one argument as a whole number above 0.
// onOff reads the one argument on or off of the option at hand.
func onOff(d *caddyfile.Dispenser, dst **bool) error {
	opt := d.Val()
	var v string
	if !d.Args(&v) || d.NextArg() {
		return d.ArgErr()
	}
	switch v {
	case "on", "off":
		on := v == "on"
		*dst = &on
		return nil
	}
	return d.Errf("%s takes on or off, not %q", opt, v)
}

func positiveInt(d *caddyfile.Dispenser, dst *int) error {
	opt := d.Val()
	var v string
	if !d.Args(&v) || d.NextArg() {
		return d.ArgErr()
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return d.Errf("%s %q is not a positive whole number", opt, v)
	}
	*dst = n
	return nil
}

func unmarshalShape(d *caddyfile.Dispenser) (shapes.ShapeConfig, error) {
	var s shapes.ShapeConfig
	if !d.Args(&s.Key) {
		return s, d.Err("shape needs a shapeKey: shape <shapeKey> { … }")
	}
	if d.NextArg() {
		return s, d.ArgErr()
	}
	single := func(dst *string) error {
		if *dst != "" {
			return d.Errf("%s given twice in shape %q", d.Val(), s.Key)
		}
		if !d.Args(dst) || d.NextArg() {
			return d.ArgErr()
		}
		return nil
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "table":
			err = single(&s.Table)
			if err == nil {
				if _, _, perr := shapes.SplitTableName(s.Table); perr != nil {
					err = d.Errf("shape %q: %v", s.Key, perr)
				}
			}
		case "key":
			s.KeyFields = append(s.KeyFields, d.RemainingArgs()...)
			if len(s.KeyFields) == 0 {
				err = d.ArgErr()
			}
		case "fields":
			args := d.RemainingArgs()
			if len(args) == 0 {
				err = d.ArgErr()
			}
			for _, f := range args {
				if !slices.Contains(s.Fields, f) {
					s.Fields = append(s.Fields, f)
				}
			}
		case "user_column":
			err = single(&s.UserColumn)
		case "updated_at_column":
			err = single(&s.UpdatedAtColumn)
		case "synced_at_column":
			err = single(&s.SyncedAtColumn)
		case "share":
			if s.Share != nil {
				return s, d.Errf("share given twice in shape %q", s.Key)
			}
			args := d.RemainingArgs()
			if len(args) < 3 || len(args) > 4 || args[1] != "via" {
				return s, d.Errf("shape %q: share takes <field> via <table> [<member column>], not %q", s.Key, strings.Join(args, " "))
			}
			s.Share = &shapes.ShareConfig{Field: args[0], Via: args[2]}
			if len(args) == 4 {
				s.Share.Member = args[3]
			}
			if _, _, perr := shapes.SplitTableName(s.Share.Via); perr != nil {
				err = d.Errf("shape %q: share via %v", s.Key, perr)
			}
		case "tombstone":
			err = single(&s.Tombstone)
		case "scoped_at_column":
			err = single(&s.ScopedAtColumn)
		case "create_table":
			if d.NextArg() {
				err = d.ArgErr()
			}
			s.CreateTable = true
		case "field":
			var name, typ string
			if !d.Args(&name, &typ) || d.NextArg() {
				return s, d.ArgErr()
			}
			if s.FieldTypes == nil {
				s.FieldTypes = map[string]string{}
			}
			s.FieldTypes[name] = typ
			// field both declares a data field and types it
			if !slices.Contains(s.KeyFields, name) && !slices.Contains(s.Fields, name) {
				s.Fields = append(s.Fields, name)
			}
			known := false
			for _, t := range shapes.FieldTypeNames {
				known = known || t == typ
			}
			if !known {
				err = d.Errf("field %q: unknown type %q (want one of %s)", name, typ, strings.Join(shapes.FieldTypeNames, ", "))
			}
		default:
			err = d.Errf("unrecognized option %q in shape %q", d.Val(), s.Key)
		}
		if err != nil {
			return s, err
		}
	}
	if len(s.KeyFields) == 0 {
		return s, d.Errf("shape %q needs a key: key <field>...", s.Key)
	}
	if err := s.Validate(); err != nil {
		return s, d.WrapErr(err)
	}
	return s, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*HyperSync)(nil)
