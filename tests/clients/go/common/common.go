// Package common holds what the Go clients of tests/clients/go/ share: the records they
// produce (deterministic, binary keys, values and headers, explicit timestamps) and the line
// format in which they print every record they send or read, so that the Rust tests compare
// them byte for byte with what librdkafka reads or wrote.
//
// A record line is
//
//	REC <partition> <offset> <timestamp-ms> <key> <value> <headers>
//
// where key and value are `null` or `x` followed by the bytes in hex (`x` alone is empty), and
// headers are `none` or comma-separated `<key in hex>:<value as above>` in record order.
package common

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// BaseTimestampMs is the create time of record 0; record i is i seconds later.
const BaseTimestampMs int64 = 1_700_000_000_000

// Header is one record header; a nil Value is a null value.
type Header struct {
	Key   string
	Value []byte
}

// Record is one record to produce.
type Record struct {
	Partition   int32
	Key         []byte
	Value       []byte
	Headers     []Header
	TimestampMs int64
}

// Records returns the count records a producer of the tests sends: record i goes to
// partition i % partitions; every seventh has a null key; values mix text that compresses
// with every byte value; headers repeat a key and carry binary, empty and (with headers) null
// values.
func Records(prefix string, count int, partitions int32, nullHeaderValues bool) []Record {
	out := make([]Record, 0, count)
	for i := 0; i < count; i++ {
		var key []byte
		if i%7 != 3 {
			key = append([]byte(fmt.Sprintf("%s-key-%d-", prefix, i)), byte(i), 0, 0xff)
		}
		value := []byte(fmt.Sprintf("%s-value-%06d|", prefix, i))
		value = append(value, []byte(strings.Repeat("compressible ", i%40))...)
		for b := 0; b < 256; b += 1 + i%5 {
			value = append(value, byte(b))
		}
		headers := []Header{
			{Key: "trace", Value: []byte(fmt.Sprintf("%s-%d", prefix, i))},
			{Key: "bin", Value: []byte{0, 0xff, byte(i), 0x80}},
			{Key: "trace", Value: []byte("second value of a repeated key")},
			{Key: "empty", Value: []byte{}},
		}
		if nullHeaderValues && i%5 == 2 {
			headers = append(headers, Header{Key: "null", Value: nil})
		}
		out = append(out, Record{
			Partition:   int32(i) % partitions,
			Key:         key,
			Value:       value,
			Headers:     headers,
			TimestampMs: BaseTimestampMs + int64(i)*1000,
		})
	}
	return out
}

func bytesField(b []byte) string {
	if b == nil {
		return "null"
	}
	return "x" + hex.EncodeToString(b)
}

// Line is the REC line of a record at partition and offset.
func Line(partition int32, offset int64, r Record) string {
	headers := "none"
	if len(r.Headers) > 0 {
		parts := make([]string, len(r.Headers))
		for i, h := range r.Headers {
			parts[i] = hex.EncodeToString([]byte(h.Key)) + ":" + bytesField(h.Value)
		}
		headers = strings.Join(parts, ",")
	}
	return fmt.Sprintf("REC %d %d %d %s %s %s", partition, offset, r.TimestampMs,
		bytesField(r.Key), bytesField(r.Value), headers)
}

// Event prints `EVENT <words>` to stderr.
func Event(words ...string) {
	fmt.Fprintln(os.Stderr, "EVENT "+strings.Join(words, " "))
}

// Fail prints the error to stderr and exits 1.
func Fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAILED "+format+"\n", args...)
	os.Exit(1)
}
