// Package shapes maps HyperSync shapes onto SQL tables and owns every SQL
// statement hypersync runs.
//
// A ShapeConfig names a table, its key fields, its data fields and its three
// bookkeeping columns (owner, client update time, server sync stamp). At
// start-up a Store checks each shape against the real table and resolves it
// into a Shape: the columns, their kinds, and the payload field name each one
// answers to.
//
// The package knows tables, columns, SQL dialects and the sync-stamp scheme
// that keeps pulls complete. It must not know HTTP, JSON request framing,
// Caddy or how the user was authenticated: callers hand it a user id and
// decoded changes, and get back per-change outcomes and pulled rows.
package shapes
