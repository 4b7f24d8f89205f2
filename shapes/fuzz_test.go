package shapes

import (
	"encoding/json"
	"testing"
	"time"
)

// fuzzShape has a column of every kind.
func fuzzShape(t testing.TB) *Shape {
	cols := []ColumnInfo{
		{Name: "id", Type: "text", Cast: "text", Kind: KindText, NotNull: true},
		{Name: "n", Type: "integer", Kind: KindInt, Bits: 32},
		{Name: "t", Type: "text", Kind: KindText, NotNull: true},
		{Name: "b", Type: "boolean", Kind: KindBool},
		{Name: "i", Type: "bigint", Kind: KindInt, Bits: 64},
		{Name: "f", Type: "double precision", Kind: KindFloat, Bits: 64},
		{Name: "r", Type: "real", Kind: KindFloat, Bits: 32},
		{Name: "num", Type: "numeric", Kind: KindNumeric},
		{Name: "ts", Type: "timestamp with time zone", Kind: KindTimestamp},
		{Name: "u", Type: "uuid", Kind: KindText},
		{Name: "j", Type: "jsonb", Kind: KindJSON},
		{Name: "a", Type: "text[]", Kind: KindArray},
		{Name: "o", Type: "inet", Kind: KindOther},
		{Name: "userId", Type: "text", Kind: KindText},
		{Name: "updatedAt", Type: "timestamp with time zone", Kind: KindTimestamp},
		{Name: "lastSyncAt", Type: "timestamp with time zone", Kind: KindTimestamp},
	}
	sh, err := resolveShape(ShapeConfig{Key: "things", KeyFields: []string{"id", "n"}},
		&TableInfo{Name: "things", Columns: cols, Unique: [][]string{{"id", "n"}}})
	if err != nil {
		t.Fatal(err)
	}
	return sh
}

// FuzzPayload feeds arbitrary payloads to the validator. It must never
// panic, and what it accepts both stores must be able to write: the SQLite
// conversion succeeds, and so does the PostgreSQL one.
func FuzzPayload(f *testing.F) {
	sh := fuzzShape(f)
	f.Fuzz(func(t *testing.T, payload []byte) {
		var p map[string]json.RawMessage
		if json.Unmarshal(payload, &p) != nil {
			return
		}
		var b rowBuilder
		r := &row{}
		err := b.build(sh, &Change{ID: "c", Shape: "things", UpdatedAt: time.Unix(1e9, 0), Payload: PayloadOf(p)}, r)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("rejection without a message")
			}
			return
		}
		if len(r.mask) != len(sh.cols) || r.key == "" {
			t.Fatalf("bad row %+v", r)
		}
		for i, v := range r.vals {
			if v == nil {
				continue
			}
			if _, err := sqliteValue(&sh.cols[i], v); err != nil {
				t.Fatalf("accepted %s for %s, which SQLite cannot take: %v", v, sh.cols[i].Name, err)
			}
		}
		g := group{shape: sh, mask: r.mask, rows: []*row{r}}
		if _, err := groupArgs("alice", g, false); err != nil {
			t.Fatalf("accepted %s, which PostgreSQL arguments cannot carry: %v", payload, err)
		}
		if _, err := groupArgs("alice", g, true); err != nil {
			t.Fatalf("accepted %s, which binary PostgreSQL arguments cannot carry: %v", payload, err)
		}
	})
}
