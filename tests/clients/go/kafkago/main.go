// kafkago-client: the tests' Kafka client written with segmentio/kafka-go (Debian's
// golang-github-segmentio-kafka-go-dev 0.2.1, built offline by scripts/install-test-deps.sh).
//
//	kafkago-client <command> --bootstrap HOST:PORT [flags]
//
// Commands (exit 0 on success; `FAILED <error>` on stderr and exit 1 otherwise; every
// connection has a 15 s deadline, so a refused request fails instead of hanging):
//
//	metadata      Conn.ReadPartitions(--topic) (Metadata v1): PARTITION <p> <leader> <replicas,...>
//	create-topic  Conn.CreateTopics (CreateTopics v0) of --topic with --partitions
//	delete-topic  Conn.DeleteTopics (DeleteTopics v1) of --topic
//	produce       Conn.WriteMessages to the leader of --topic partition 0 (Produce v2,
//	              message format v1: no headers), --count records, printing REC lines
//	consume       Conn.ReadBatch on --topic partition 0 from offset 0 (Fetch v2) until --count
//	              records, printing REC lines
//
// kafka-go 0.2.1 (2018) predates record batches: it produces and fetches with message format
// v1 and sends no ApiVersions. Kafka 4 removed those versions (KIP-896: Produce v0-2,
// Fetch v0-3, CreateTopics v0-1), and strom serves Kafka 4's ranges, so only its metadata and
// DeleteTopics calls are served; the others are refused by closing the connection, as Kafka
// 4 does.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	kafka "github.com/segmentio/kafka-go"

	common "../common"
)

const deadline = 15 * time.Second

type args struct {
	bootstrap  string
	topic      string
	prefix     string
	partitions int
	count      int
}

func main() {
	if len(os.Args) < 2 {
		common.Fail("usage: kafkago-client metadata|create-topic|delete-topic|produce|consume " +
			"--bootstrap HOST:PORT --topic T ...")
	}
	command := os.Args[1]
	var a args
	fs := flag.NewFlagSet(command, flag.ExitOnError)
	fs.StringVar(&a.bootstrap, "bootstrap", "", "host:port,...")
	fs.StringVar(&a.topic, "topic", "", "topic")
	fs.StringVar(&a.prefix, "prefix", "kafka-go", "record prefix")
	fs.IntVar(&a.partitions, "partitions", 1, "partitions")
	fs.IntVar(&a.count, "count", 1, "records")
	_ = fs.Parse(os.Args[2:])
	if a.bootstrap == "" || a.topic == "" {
		common.Fail("--bootstrap and --topic are required")
	}
	var err error
	switch command {
	case "metadata":
		err = metadata(a)
	case "create-topic":
		err = withConn(a, func(c *kafka.Conn) error {
			return c.CreateTopics(kafka.TopicConfig{
				Topic: a.topic, NumPartitions: a.partitions, ReplicationFactor: 1,
			})
		})
	case "delete-topic":
		err = withConn(a, func(c *kafka.Conn) error { return c.DeleteTopics(a.topic) })
	case "produce":
		err = produce(a)
	case "consume":
		err = consume(a)
	default:
		err = fmt.Errorf("unknown command %q", command)
	}
	if err != nil {
		common.Fail("%s: %v", command, err)
	}
	fmt.Printf("OK %s %s\n", command, a.topic)
}

func dial(a args) (*kafka.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	conn, err := (&kafka.Dialer{ClientID: "kafka-go"}).DialContext(ctx, "tcp",
		strings.Split(a.bootstrap, ",")[0])
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(deadline))
	return conn, nil
}

func withConn(a args, f func(*kafka.Conn) error) error {
	conn, err := dial(a)
	if err != nil {
		return err
	}
	defer conn.Close()
	return f(conn)
}

func metadata(a args) error {
	return withConn(a, func(c *kafka.Conn) error {
		partitions, err := c.ReadPartitions(a.topic)
		if err != nil {
			return err
		}
		sort.Slice(partitions, func(i, j int) bool { return partitions[i].ID < partitions[j].ID })
		for _, p := range partitions {
			replicas := make([]string, len(p.Replicas))
			for i, r := range p.Replicas {
				replicas[i] = fmt.Sprint(r.ID)
			}
			fmt.Printf("PARTITION %d %d %s\n", p.ID, p.Leader.ID, strings.Join(replicas, ","))
		}
		return nil
	})
}

func leader(a args) (*kafka.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	conn, err := (&kafka.Dialer{ClientID: "kafka-go"}).DialLeader(ctx, "tcp",
		strings.Split(a.bootstrap, ",")[0], a.topic, 0)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(deadline))
	return conn, nil
}

func produce(a args) error {
	conn, err := leader(a)
	if err != nil {
		return err
	}
	defer conn.Close()
	records := common.Records(a.prefix, a.count, 1, false)
	messages := make([]kafka.Message, len(records))
	for i, r := range records {
		messages[i] = kafka.Message{
			Key: r.Key, Value: r.Value, Time: time.Unix(0, r.TimestampMs*int64(time.Millisecond)),
		}
	}
	if _, err := conn.WriteMessages(messages...); err != nil {
		return err
	}
	for _, r := range records {
		r.Headers = nil
		fmt.Println(common.Line(0, -1, r))
	}
	return nil
}

func consume(a args) error {
	conn, err := leader(a)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Seek(0, kafka.SeekAbsolute); err != nil {
		return err
	}
	for read := 0; read < a.count; read++ {
		m, err := conn.ReadMessage(4 << 20)
		if err != nil {
			return err
		}
		r := common.Record{Key: m.Key, Value: m.Value, TimestampMs: m.Time.UnixNano() / int64(time.Millisecond)}
		fmt.Println(common.Line(int32(m.Partition), m.Offset, r))
	}
	return nil
}
