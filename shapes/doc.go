// Package shapes is hypersync's database-neutral core: it maps HyperSync
// shapes onto SQL tables and holds every rule of a push and a pull.
//
// A ShapeConfig names a table, its key fields, its data fields and its three
// bookkeeping columns (owner, client update time, server sync stamp). A
// Store checks each shape against the real table (Resolve) and keeps the
// result as one ShapeSet. A push validates each change against its shape,
// plans the rows into groups of one statement each (plan.go), and hands
// them to the database's Driver; when the database refuses a value, the
// Store writes the push again one change at a time, so that only the
// changes at fault are rejected. A pull streams the rows the Driver reads,
// as Values.
//
// The core knows no driver. Each database is a package below this one
// (shapes/postgres, shapes/sqlite) that implements Driver and registers its
// DSNs with Register; since those packages import this one, the compiler
// refuses the reverse. The core must not know HTTP, JSON framing of
// answers, Caddy or how the user was authenticated: callers hand it a user
// id and decoded changes, and get back per-change outcomes and pulled rows.
package shapes
