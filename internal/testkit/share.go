package testkit

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hypersync/hypersync/shapes"
)

// ListShapes are the sharing issue's example: lists and their todos,
// shared with the members of each list, and the memberships, a shape of
// their own, created by hypersync.
func ListShapes() []shapes.ShapeConfig {
	share := func(member string) *shapes.ShareConfig {
		return &shapes.ShareConfig{Field: "listId", Via: "list_members", Member: member}
	}
	return []shapes.ShapeConfig{
		{Key: "lists", KeyFields: []string{"listId"}, Fields: []string{"name", "deleted"}, Share: share(""),
			CreateTable: true, FieldTypes: map[string]string{"deleted": "boolean"}},
		{Key: "todos", KeyFields: []string{"todoId"}, Fields: []string{"listId", "title", "done", "deleted"}, Share: share(""),
			CreateTable: true, FieldTypes: map[string]string{"done": "boolean", "deleted": "boolean"}},
		{Key: "list_members", KeyFields: []string{"listId", "memberId"}, Fields: []string{"deleted"}, Share: share("memberId"),
			CreateTable: true, FieldTypes: map[string]string{"deleted": "boolean"}},
	}
}

// Device is one client of a fixture: it follows its cursor, truncated to
// the millisecond as the real client does, and keeps what it pulled by
// shape and key, applying a version only when it is newer than the one it
// holds, or as new (a tombstone's updatedAt equals the row's).
type Device struct {
	F      *Fixture
	User   string
	Cursor time.Time
	Rows   map[string]Pulled // by shape and key fields
	Got    []Pulled          // every change of every pull
}

// NewDevice returns a device of user that has never synced.
func (f *Fixture) NewDevice(user string) *Device {
	return &Device{F: f, User: user, Cursor: time.Unix(0, 0).UTC(), Rows: map[string]Pulled{}}
}

// Sync pulls once and applies what came; it returns the changes.
func (d *Device) Sync() []Pulled {
	d.F.T.Helper()
	rows, cursor := d.F.Pull(d.User, d.Cursor)
	d.Cursor = cursor.Truncate(time.Millisecond)
	for _, r := range rows {
		k := RowKey(r)
		if old, ok := d.Rows[k]; !ok || r.UpdatedAt >= old.UpdatedAt {
			d.Rows[k] = r
		}
	}
	d.Got = append(d.Got, rows...)
	return rows
}

// Live returns the keys of the rows the device holds whose deleted field
// is not true, sorted: what an app shows.
func (d *Device) Live() []string {
	var out []string
	for k, r := range d.Rows {
		if r.Payload["deleted"] != true {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// RowKey names a pulled row: its shape and key fields.
func RowKey(r Pulled) string {
	switch r.Shape {
	case "lists":
		return "lists/" + fmt.Sprint(r.Payload["listId"])
	case "todos":
		return "todos/" + fmt.Sprint(r.Payload["todoId"])
	case "list_members":
		return "list_members/" + fmt.Sprint(r.Payload["listId"]) + "/" + fmt.Sprint(r.Payload["memberId"])
	case "events":
		return "events/" + fmt.Sprint(r.Payload["eventId"]) + "/" + fmt.Sprint(r.Payload["day"])
	}
	var keys []string
	for k, v := range r.Payload {
		keys = append(keys, k+"="+fmt.Sprint(v))
	}
	sort.Strings(keys)
	return r.Shape + "/" + strings.Join(keys, ",")
}

// Member builds a membership change.
func Member(at int, list, member string, deleted bool) shapes.Change {
	return Change("list_members", At(at), fmt.Sprintf(`{"listId":%q,"memberId":%q,"deleted":%t}`, list, member, deleted))
}

// List builds a list change.
func List(at int, list, name string) shapes.Change {
	return Change("lists", At(at), fmt.Sprintf(`{"listId":%q,"name":%q,"deleted":false}`, list, name))
}

// Todo builds a todo change; list "" makes it private.
func Todo(at int, todo, list, title string) shapes.Change {
	l := "null"
	if list != "" {
		l = fmt.Sprintf("%q", list)
	}
	return Change("todos", At(at), fmt.Sprintf(`{"todoId":%q,"listId":%s,"title":%q,"done":false,"deleted":false}`, todo, l, title))
}

// WantLive fails unless the device shows exactly want.
func (d *Device) WantLive(t *testing.T, want ...string) {
	t.Helper()
	sort.Strings(want)
	if got := d.Live(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("%s shows %v, want %v", d.User, got, want)
	}
}
