package postgres

import (
	"bytes"
	"encoding/binary"
	"math"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/hypersync/hypersync/shapes"
)

// A push sends each column of a group as one array argument. pgx encodes
// typed Go slices element by element, boxing each element in an interface;
// for a 300-change push that is most of the allocations the push makes.
// Instead, binaryColumn writes each array in PostgreSQL's binary format
// straight from the JSON values, and a codec wrapped around pgx's array
// codecs passes those bytes through. Everything else those codecs do is
// unchanged.

// encodedArray is a one-dimensional array argument already in PostgreSQL's
// binary format (what array_recv reads).
type encodedArray []byte

// arrayOIDs are the array types pushes send, with their element types.
var arrayOIDs = map[uint32]uint32{
	pgtype.TextArrayOID:        pgtype.TextOID,
	pgtype.BoolArrayOID:        pgtype.BoolOID,
	pgtype.Int8ArrayOID:        pgtype.Int8OID,
	pgtype.Float8ArrayOID:      pgtype.Float8OID,
	pgtype.TimestamptzArrayOID: pgtype.TimestamptzOID,
}

// registerEncodedArrays wraps the codecs of the push array types in m.
func registerEncodedArrays(m *pgtype.Map) {
	for oid := range arrayOIDs {
		t, ok := m.TypeForOID(oid)
		if !ok {
			continue
		}
		if _, done := t.Codec.(encodedArrayCodec); done {
			continue
		}
		m.RegisterType(&pgtype.Type{Name: t.Name, OID: oid, Codec: encodedArrayCodec{t.Codec}})
	}
}

// binaryModes are the query modes in which pgx sends arguments in binary,
// as the prepared statement's parameter types say. In the others
// (simple_protocol, exec) pushes send typed slices that pgx encodes.
func binaryMode(m pgx.QueryExecMode) bool {
	return m == pgx.QueryExecModeCacheStatement || m == pgx.QueryExecModeCacheDescribe || m == pgx.QueryExecModeDescribeExec
}

type encodedArrayCodec struct{ pgtype.Codec }

func (c encodedArrayCodec) PlanEncode(m *pgtype.Map, oid uint32, format int16, value any) pgtype.EncodePlan {
	if _, ok := value.(encodedArray); ok && format == pgtype.BinaryFormatCode {
		return encodedArrayPlan{}
	}
	return c.Codec.PlanEncode(m, oid, format, value)
}

type encodedArrayPlan struct{}

func (encodedArrayPlan) Encode(value any, buf []byte) ([]byte, error) {
	return append(buf, value.(encodedArray)...), nil
}

// arrayWriter builds one encodedArray of n elements.
type arrayWriter struct {
	buf   []byte
	nulls bool
}

func newArrayWriter(elemOID uint32, n, size int) *arrayWriter {
	w := &arrayWriter{buf: make([]byte, 0, 20+4*n+size)}
	w.buf = binary.BigEndian.AppendUint32(w.buf, 1) // dimensions
	w.buf = binary.BigEndian.AppendUint32(w.buf, 0) // flags: no NULLs, set in done
	w.buf = binary.BigEndian.AppendUint32(w.buf, elemOID)
	w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(n)) // length
	w.buf = binary.BigEndian.AppendUint32(w.buf, 1)         // lower bound
	return w
}

func (w *arrayWriter) null() {
	w.nulls = true
	w.buf = binary.BigEndian.AppendUint32(w.buf, math.MaxUint32) // length -1
}

// begin starts an element of n bytes; the caller appends them to w.buf.
func (w *arrayWriter) begin(n int) {
	w.buf = binary.BigEndian.AppendUint32(w.buf, uint32(n))
}

func (w *arrayWriter) done() encodedArray {
	if w.nulls {
		binary.BigEndian.PutUint32(w.buf[4:], 1)
	}
	return encodedArray(w.buf)
}

// pgEpoch is PostgreSQL's timestamp origin, 2000-01-01 UTC.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// appendTimestamptz appends t as a binary timestamptz: microseconds since
// 2000-01-01 UTC, truncated as pgx truncates them.
func (w *arrayWriter) appendTimestamptz(t time.Time) {
	w.begin(8)
	us := t.Unix()*1_000_000 + int64(t.Nanosecond())/1000 - pgEpoch.Unix()*1_000_000
	w.buf = binary.BigEndian.AppendUint64(w.buf, uint64(us))
}

// binaryColumn is column i of rows as an encodedArray.
func binaryColumn(c *shapes.Column, rows []*shapes.Row, i int) (any, error) {
	n := len(rows)
	var w *arrayWriter
	switch c.Kind {
	case shapes.KindBool:
		w = newArrayWriter(pgtype.BoolOID, n, 5*n)
	case shapes.KindInt:
		w = newArrayWriter(pgtype.Int8OID, n, 8*n)
	case shapes.KindFloat:
		w = newArrayWriter(pgtype.Float8OID, n, 8*n)
	case shapes.KindTimestamp:
		w = newArrayWriter(pgtype.TimestamptzOID, n, 8*n)
	default:
		size := 0
		for _, r := range rows {
			size += len(r.Vals[i])
		}
		w = newArrayWriter(pgtype.TextOID, n, size)
	}
	for _, r := range rows {
		raw := trimmed(r.Vals[i])
		if raw == nil {
			w.null()
			continue
		}
		if err := w.appendValue(c, raw); err != nil {
			return nil, err
		}
	}
	return w.done(), nil
}

func binaryStamps(rows []*shapes.Row) any {
	w := newArrayWriter(pgtype.TimestamptzOID, len(rows), 8*len(rows))
	for _, r := range rows {
		w.appendTimestamptz(r.UpdatedAt)
	}
	return w.done()
}

// appendValue appends a checked, non-null value of column c.
func (w *arrayWriter) appendValue(c *shapes.Column, raw []byte) error {
	switch c.Kind {
	case shapes.KindBool:
		w.begin(1)
		if raw[0] == 't' {
			w.buf = append(w.buf, 1)
		} else {
			w.buf = append(w.buf, 0)
		}
	case shapes.KindInt:
		v, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return err
		}
		w.begin(8)
		w.buf = binary.BigEndian.AppendUint64(w.buf, uint64(v))
	case shapes.KindFloat:
		v, err := strconv.ParseFloat(string(raw), 64)
		if err != nil {
			return err
		}
		w.begin(8)
		w.buf = binary.BigEndian.AppendUint64(w.buf, math.Float64bits(v))
	case shapes.KindTimestamp:
		t, err := shapes.TimeValue(raw)
		if err != nil {
			return err
		}
		w.appendTimestamptz(t)
	default:
		if c.Kind == shapes.KindText && plainString(raw) && !c.IsUUID() {
			// the common case: the text is what lies between the quotes
			w.begin(len(raw) - 2)
			w.buf = append(w.buf, raw[1:len(raw)-1]...)
			return nil
		}
		s, err := c.TextValue(raw)
		if err != nil {
			return err
		}
		w.begin(len(s))
		w.buf = append(w.buf, s...)
	}
	return nil
}

// plainString reports whether raw is a JSON string without escapes.
func plainString(raw []byte) bool {
	return len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"' && bytes.IndexByte(raw, '\\') < 0
}

// trimmed returns a value without surrounding space, or nil when it is
// missing or JSON null.
func trimmed(raw []byte) []byte {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] == 'n' {
		return nil
	}
	return raw
}
