package hypersync

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/hypersync/hypersync/shapes"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "hypersync",
		Usage: "check|schema|export|inspect|erase|unblock --config <path> [--adapter <name>] [--user <id>]",
		Short: "Checks hypersync's tables, and inspects, exports or erases a user's data",
		Long: `
"check" loads the config, connects to each hypersync database and reports,
per shape, what is right or wrong with its table, with the SQL that would fix
it. It exits 0 only when everything is right.

"schema" prints the CREATE TABLE and CREATE INDEX statements of every shape,
using the field types of create_table, without touching any database.

The commands for one user (--user <id>) connect to every hypersync block's
database, and take the locks pushes take, so they are safe against running
servers:

"export" writes the user's data as one JSON document: per block, exactly what
a pull from the epoch sends them, and their record of refused changes.

"inspect" prints, per shape, how many rows the user receives, their scopes,
their cursor and their newest refused changes; with --shape and --key, whether
they receive that row, and why.

"erase" deletes the user's private rows, removes them from every scope,
gives the shared rows they wrote a placeholder author, deletes their cursor
and record, and blocks their id. It needs --yes; --dry-run shows what it
would do.

"unblock" lifts the block erase put on a user id.`,
		CobraFunc: func(cmd *cobra.Command) {
			for _, sub := range []struct {
				name, short, use string
				run              caddycmd.CommandFunc
				flags            func(*pflag.FlagSet)
			}{
				{"check", "Checks every shape against its table", "", cmdCheck, nil},
				{"schema", "Prints the DDL of every shape", "", cmdSchema, nil},
				{"export", "Writes a user's data as JSON", " --user <id> [--output <file>]", cmdExport, func(f *pflag.FlagSet) {
					f.StringP("output", "o", "", "Write the document to this file instead of stdout")
				}},
				{"inspect", "Says what a user receives, and why", " --user <id> [--shape <s> --key <k>] [--json]", cmdInspect, func(f *pflag.FlagSet) {
					f.String("shape", "", "The shape of the row to explain")
					f.String("key", "", "The row's key value, or a JSON object of its key fields")
					f.Bool("json", false, "Print JSON")
				}},
				{"erase", "Erases a user's data and blocks their id", " --user <id> (--yes | --dry-run)", cmdErase, func(f *pflag.FlagSet) {
					f.Bool("yes", false, "Erase for good")
					f.Bool("dry-run", false, "Print what erase would do, and change nothing")
				}},
				{"unblock", "Lifts the block erase put on a user id", " --user <id>", cmdUnblock, nil},
			} {
				c := &cobra.Command{Use: sub.name + " --config <path> [--adapter <name>]" + sub.use, Short: sub.short,
					RunE: caddycmd.WrapCommandFuncForCobra(sub.run)}
				c.Flags().StringP("config", "c", "", "Configuration file (default: ./Caddyfile)")
				c.Flags().StringP("adapter", "a", "", "Name of config adapter")
				if sub.use != "" {
					c.Flags().StringP("user", "u", "", "The user id, as the authentication gives it")
				}
				if sub.flags != nil {
					sub.flags(c.Flags())
				}
				cmd.AddCommand(c)
			}
		},
	})
}

// configuredHandlers loads a config and returns its hypersync handlers.
func configuredHandlers(fl caddycmd.Flags) ([]*HyperSync, error) {
	cfg, _, _, err := caddycmd.LoadConfig(fl.String("config"), fl.String("adapter"))
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return nil, fmt.Errorf("no config found: use --config")
	}
	var doc any
	if err := json.Unmarshal(cfg, &doc); err != nil {
		return nil, err
	}
	var found []*HyperSync
	var walk func(v any) error
	walk = func(v any) error {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "hypersync" {
				b, _ := json.Marshal(v)
				hs := new(HyperSync)
				if err := json.Unmarshal(b, hs); err != nil {
					return err
				}
				found = append(found, hs)
				return nil
			}
			for _, x := range v {
				if err := walk(x); err != nil {
					return err
				}
			}
		case []any:
			for _, x := range v {
				if err := walk(x); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(doc); err != nil {
		return nil, err
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("the config has no hypersync handler")
	}
	return found, nil
}

func (h *HyperSync) resolvedDSN() (string, error) {
	if h.Database == "" {
		return shapes.DefaultSQLite, nil
	}
	dsn, err := caddy.NewReplacer().ReplaceOrErr(h.Database, true, true)
	if err != nil {
		return "", fmt.Errorf("database: %w", err)
	}
	return dsn, shapes.CheckDSN(dsn)
}

// resolvedReadDatabases resolves the read_database placeholders.
func (h *HyperSync) resolvedReadDatabases() ([]string, error) {
	var out []string
	for _, r := range h.ReadDatabases {
		r, err := caddy.NewReplacer().ReplaceOrErr(r, true, true)
		if err != nil {
			return nil, fmt.Errorf("read_database: %w", err)
		}
		if shapes.KindOf(r) != "postgres" {
			return nil, fmt.Errorf("read_database %q is not a postgres:// DSN", shapes.RedactDSN(r))
		}
		out = append(out, r)
	}
	return out, nil
}

func cmdCheck(fl caddycmd.Flags) (int, error) {
	handlers, err := configuredHandlers(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	bad := 0
	for _, h := range handlers {
		dsn, err := h.resolvedDSN()
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		replicas, err := h.resolvedReadDatabases()
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		db, err := shapes.Open(dsn, shapes.Options{ReadReplicas: replicas})
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		fmt.Printf("database %s\n", db)
		if err := db.Ping(ctx); err != nil {
			fmt.Printf("  ✗ cannot connect: %v\n", err)
			bad++
			cancel()
			_ = db.Destruct()
			continue
		}
		for _, r := range db.CheckReplicas(ctx) {
			if r.Err != nil {
				fmt.Printf("  ✗ read_database %s: %v\n", r.Target, r.Err)
				bad++
			} else {
				fmt.Printf("  ✓ read_database %s: a hot standby of database, %d bytes of WAL behind\n", r.Target, r.BytesBehind)
			}
		}
		for _, cfg := range h.Shapes {
			d, err := db.Diagnose(ctx, cfg, h.Shapes...)
			switch {
			case err != nil:
				fmt.Printf("  ✗ shape %q: %v\n", cfg.Key, err)
				bad++
			case d.OK:
				fmt.Printf("  ✓ shape %q: table %s is ready\n", d.Shape, d.Table)
				for _, w := range d.Warnings {
					fmt.Printf("    ⚠ %s\n", w)
				}
				printFix(d.Fix)
			default:
				bad++
				fmt.Printf("  ✗ shape %q: table %s\n", d.Shape, d.Table)
				for _, p := range d.Problems {
					fmt.Printf("      %s\n", p)
				}
				printFix(d.Fix)
			}
		}
		cancel()
		_ = db.Destruct()
	}
	if bad > 0 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("%d problem(s) found", bad)
	}
	return caddy.ExitCodeSuccess, nil
}

func cmdSchema(fl caddycmd.Flags) (int, error) {
	handlers, err := configuredHandlers(fl)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	for _, h := range handlers {
		// a DSN from a placeholder that is not set here: most such
		// DSNs hold a PostgreSQL URL
		kind := "postgres"
		if dsn, err := h.resolvedDSN(); err == nil && shapes.KindOf(dsn) != "" {
			kind = shapes.KindOf(dsn)
		} else if k := shapes.KindOf(h.Database); k != "" {
			kind = k
		}
		fmt.Printf("-- %s\n", kind)
		for _, cfg := range h.Shapes {
			fmt.Printf("-- shape %q\n", cfg.Key)
			for _, stmt := range shapes.SchemaSQL(kind, cfg, h.Shapes...) {
				fmt.Printf("%s;\n", stmt)
			}
		}
		fmt.Println()
	}
	return caddy.ExitCodeSuccess, nil
}

// printFix prints the SQL that fixes what check found.
func printFix(fix []string) {
	if len(fix) == 0 {
		return
	}
	fmt.Printf("    to fix it:\n")
	for _, stmt := range fix {
		fmt.Printf("      %s;\n", strings.ReplaceAll(stmt, "\n", "\n      "))
	}
}
