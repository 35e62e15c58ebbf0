// sarama-client: the tests' Kafka client written with sarama (Debian's
// golang-github-shopify-sarama-dev, built offline by scripts/install-test-deps.sh).
//
//	sarama-client <command> --bootstrap HOST:PORT [flags]
//
// Commands (every one exits 0 on success; `FAILED <error>` on stderr and exit 1 otherwise):
//
//	metadata            BROKER <id> <host:port> lines and CONTROLLER <id> (Metadata v5), then for --topic
//	                    PARTITION <p> <leader> <replicas,...> lines (sorted)
//	create-topic        ClusterAdmin.CreateTopic(--topic, --partitions, --replication)
//	delete-topic        ClusterAdmin.DeleteTopic(--topic)
//	produce             a SyncProducer (acks all, --codec none|gzip|snappy|lz4|zstd) sends
//	                    the --count records of tests/clients/go/common to --partitions
//	                    partitions in one batch and prints each acknowledged one as a REC line
//	consume             reads --partitions partitions of --topic from the oldest offset until
//	                    --count records, printing REC lines in partition and offset order
//	idempotent_producer Idempotent=true, acks all, MaxOpenRequests=1: --count records,
//	                    record i to partition i % --partitions with key k<i> and value
//	                    <prefix>-<i> (six digits); prints `<partition> <offset> <value>` per
//	                    record in send order
//	group_consumer      one member of --group on --topic; prints `<partition> <offset> <value>`
//	                    per record, `EVENT assigned <p>...` on stderr after each join, marks
//	                    every printed record and commits on each rebalance and on a clean stop
//	                    (SIGTERM, SIGINT, or end of stdin with --exit-on-stdin-eof)
//
// The Kafka version sarama is told is 2.1.0 (the lowest with zstd): record batches, headers,
// Produce v3, Fetch v4, Metadata v5, CreateTopics v2, DeleteTopics v1. Offsets are committed
// with a retention time so that sarama sends OffsetCommit v2 (it sends v1 without one, which
// Kafka 4 and strom no longer serve).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/Shopify/sarama"

	common "../common"
)

type args struct {
	bootstrap     string
	topic         string
	group         string
	name          string
	prefix        string
	codec         string
	partitions    int
	replication   int
	count         int
	exitOnEOF     bool
	logLevel      string
	nullHeaderVal bool
}

func parse(command string, argv []string) args {
	var a args
	fs := flag.NewFlagSet(command, flag.ExitOnError)
	fs.StringVar(&a.bootstrap, "bootstrap", "", "host:port,...")
	fs.StringVar(&a.topic, "topic", "", "topic")
	fs.StringVar(&a.group, "group", "", "consumer group")
	fs.StringVar(&a.name, "name", "sarama", "client id / member name")
	fs.StringVar(&a.prefix, "prefix", "sarama", "record prefix")
	fs.StringVar(&a.codec, "codec", "none", "none|gzip|snappy|lz4|zstd")
	fs.IntVar(&a.partitions, "partitions", 1, "partitions")
	fs.IntVar(&a.replication, "replication", 1, "replication factor")
	fs.IntVar(&a.count, "count", 0, "records")
	fs.BoolVar(&a.exitOnEOF, "exit-on-stdin-eof", false, "stop cleanly when stdin closes")
	fs.StringVar(&a.logLevel, "log-level", "INFO", "DEBUG logs sarama's own log to stderr")
	fs.BoolVar(&a.nullHeaderVal, "null-header-values", true, "some records get a null header value")
	_ = fs.Parse(argv)
	if a.bootstrap == "" {
		common.Fail("--bootstrap is required")
	}
	if strings.EqualFold(a.logLevel, "DEBUG") {
		sarama.Logger = log.New(os.Stderr, "[sarama] ", log.LstdFlags|log.Lmicroseconds)
	}
	return a
}

func config(a args) *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = a.name
	c.Version = sarama.V2_1_0_0
	c.Metadata.Retry.Max = 10
	c.Metadata.Retry.Backoff = 200 * time.Millisecond
	c.Net.DialTimeout = 10 * time.Second
	c.Admin.Timeout = 30 * time.Second
	return c
}

func main() {
	if len(os.Args) < 2 {
		common.Fail("usage: sarama-client metadata|create-topic|delete-topic|produce|consume|" +
			"idempotent_producer|group_consumer --bootstrap HOST:PORT ...")
	}
	command := os.Args[1]
	a := parse(command, os.Args[2:])
	var err error
	switch command {
	case "metadata":
		err = metadata(a)
	case "create-topic":
		err = createTopic(a)
	case "delete-topic":
		err = deleteTopic(a)
	case "produce":
		err = produce(a)
	case "consume":
		err = consume(a)
	case "idempotent_producer":
		err = idempotentProducer(a)
	case "group_consumer":
		err = groupConsumer(a)
	default:
		err = fmt.Errorf("unknown command %q", command)
	}
	if err != nil {
		common.Fail("%s: %v", command, err)
	}
}

func addrs(a args) []string { return strings.Split(a.bootstrap, ",") }

func metadata(a args) error {
	client, err := sarama.NewClient(addrs(a), config(a))
	if err != nil {
		return err
	}
	defer client.Close()
	brokers := client.Brokers()
	sort.Slice(brokers, func(i, j int) bool { return brokers[i].ID() < brokers[j].ID() })
	for _, b := range brokers {
		fmt.Printf("BROKER %d %s\n", b.ID(), b.Addr())
	}
	controller, err := client.Controller()
	if err != nil {
		return fmt.Errorf("Controller: %w", err)
	}
	fmt.Printf("CONTROLLER %d\n", controller.ID())
	if a.topic == "" {
		return nil
	}
	admin, err := sarama.NewClusterAdmin(addrs(a), config(a))
	if err != nil {
		return err
	}
	defer admin.Close()
	topics, err := admin.DescribeTopics([]string{a.topic})
	if err != nil {
		return fmt.Errorf("DescribeTopics: %w", err)
	}
	for _, t := range topics {
		if t.Err != sarama.ErrNoError {
			return fmt.Errorf("topic %s: %v", t.Name, t.Err)
		}
		sort.Slice(t.Partitions, func(i, j int) bool { return t.Partitions[i].ID < t.Partitions[j].ID })
		for _, p := range t.Partitions {
			replicas := make([]string, len(p.Replicas))
			for i, r := range p.Replicas {
				replicas[i] = fmt.Sprint(r)
			}
			fmt.Printf("PARTITION %d %d %s\n", p.ID, p.Leader, strings.Join(replicas, ","))
		}
	}
	return nil
}

func createTopic(a args) error {
	admin, err := sarama.NewClusterAdmin(addrs(a), config(a))
	if err != nil {
		return err
	}
	defer admin.Close()
	detail := &sarama.TopicDetail{
		NumPartitions:     int32(a.partitions),
		ReplicationFactor: int16(a.replication),
	}
	if err := admin.CreateTopic(a.topic, detail, false); err != nil {
		return fmt.Errorf("CreateTopic: %w", err)
	}
	// A second create of the same name must fail with TOPIC_ALREADY_EXISTS.
	err = admin.CreateTopic(a.topic, detail, false)
	if topicErr, ok := err.(*sarama.TopicError); !ok || topicErr.Err != sarama.ErrTopicAlreadyExists {
		return fmt.Errorf("second CreateTopic answered %v, want TOPIC_ALREADY_EXISTS", err)
	}
	fmt.Printf("CREATED %s\n", a.topic)
	return nil
}

func deleteTopic(a args) error {
	admin, err := sarama.NewClusterAdmin(addrs(a), config(a))
	if err != nil {
		return err
	}
	defer admin.Close()
	if err := admin.DeleteTopic(a.topic); err != nil {
		return fmt.Errorf("DeleteTopic: %w", err)
	}
	fmt.Printf("DELETED %s\n", a.topic)
	return nil
}

func codec(name string) (sarama.CompressionCodec, error) {
	switch name {
	case "none":
		return sarama.CompressionNone, nil
	case "gzip":
		return sarama.CompressionGZIP, nil
	case "snappy":
		return sarama.CompressionSnappy, nil
	case "lz4":
		return sarama.CompressionLZ4, nil
	case "zstd":
		return sarama.CompressionZSTD, nil
	}
	return 0, fmt.Errorf("unknown codec %q", name)
}

func toHeaders(hs []common.Header) []sarama.RecordHeader {
	out := make([]sarama.RecordHeader, len(hs))
	for i, h := range hs {
		out[i] = sarama.RecordHeader{Key: []byte(h.Key), Value: h.Value}
	}
	return out
}

// encoder passes bytes through, keeping nil as a null key or value.
func encoder(b []byte) sarama.Encoder {
	if b == nil {
		return nil
	}
	return sarama.ByteEncoder(b)
}

func produce(a args) error {
	c := config(a)
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Partitioner = sarama.NewManualPartitioner
	c.Producer.Flush.Messages = a.count
	c.Producer.Flush.Frequency = 50 * time.Millisecond
	c.Producer.MaxMessageBytes = 4 << 20
	var err error
	if c.Producer.Compression, err = codec(a.codec); err != nil {
		return err
	}
	producer, err := sarama.NewSyncProducer(addrs(a), c)
	if err != nil {
		return err
	}
	records := common.Records(a.prefix, a.count, int32(a.partitions), a.nullHeaderVal)
	messages := make([]*sarama.ProducerMessage, len(records))
	for i, r := range records {
		messages[i] = &sarama.ProducerMessage{
			Topic:     a.topic,
			Partition: r.Partition,
			Key:       encoder(r.Key),
			Value:     encoder(r.Value),
			Headers:   toHeaders(r.Headers),
			Timestamp: time.Unix(0, r.TimestampMs*int64(time.Millisecond)),
			Metadata:  i,
		}
	}
	if err := producer.SendMessages(messages); err != nil {
		producer.Close()
		return fmt.Errorf("SendMessages: %w", err)
	}
	if err := producer.Close(); err != nil {
		return err
	}
	for i, m := range messages {
		fmt.Println(common.Line(m.Partition, m.Offset, records[i]))
	}
	return nil
}

func consume(a args) error {
	c := config(a)
	c.Consumer.Return.Errors = true
	c.Consumer.Fetch.Max = 4 << 20
	consumer, err := sarama.NewConsumer(addrs(a), c)
	if err != nil {
		return err
	}
	defer consumer.Close()
	type read struct {
		partition int32
		offset    int64
		line      string
	}
	var (
		mu    sync.Mutex
		lines []read
		done  = make(chan struct{})
		once  sync.Once
		errs  = make(chan error, a.partitions)
	)
	for p := 0; p < a.partitions; p++ {
		pc, err := consumer.ConsumePartition(a.topic, int32(p), sarama.OffsetOldest)
		if err != nil {
			return fmt.Errorf("ConsumePartition %d: %w", p, err)
		}
		defer pc.Close()
		go func(pc sarama.PartitionConsumer) {
			for {
				select {
				case <-done:
					return
				case e := <-pc.Errors():
					errs <- e
					return
				case m := <-pc.Messages():
					r := common.Record{Key: m.Key, Value: m.Value, TimestampMs: m.Timestamp.UnixNano() / int64(time.Millisecond)}
					for _, h := range m.Headers {
						r.Headers = append(r.Headers, common.Header{Key: string(h.Key), Value: h.Value})
					}
					mu.Lock()
					lines = append(lines, read{m.Partition, m.Offset, common.Line(m.Partition, m.Offset, r)})
					if len(lines) >= a.count {
						once.Do(func() { close(done) })
					}
					mu.Unlock()
				}
			}
		}(pc)
	}
	select {
	case <-done:
	case err := <-errs:
		return err
	case <-time.After(60 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		return fmt.Errorf("read %d of %d records within 60s", len(lines), a.count)
	}
	mu.Lock()
	defer mu.Unlock()
	sort.Slice(lines, func(i, j int) bool {
		if lines[i].partition != lines[j].partition {
			return lines[i].partition < lines[j].partition
		}
		return lines[i].offset < lines[j].offset
	})
	for _, l := range lines {
		fmt.Println(l.line)
	}
	return nil
}

func idempotentProducer(a args) error {
	c := config(a)
	c.Producer.Idempotent = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Net.MaxOpenRequests = 1
	c.Producer.Retry.Max = 10
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.Partitioner = sarama.NewManualPartitioner
	producer, err := sarama.NewAsyncProducer(addrs(a), c)
	if err != nil {
		return err
	}
	type ack struct {
		partition int32
		offset    int64
	}
	acks := make([]*ack, a.count)
	var failure error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for received := 0; received < a.count; received++ {
			select {
			case m := <-producer.Successes():
				acks[m.Metadata.(int)] = &ack{m.Partition, m.Offset}
			case e := <-producer.Errors():
				if failure == nil {
					failure = e.Err
				}
			}
		}
	}()
	for i := 0; i < a.count; i++ {
		producer.Input() <- &sarama.ProducerMessage{
			Topic:     a.topic,
			Partition: int32(i % a.partitions),
			Key:       sarama.StringEncoder(fmt.Sprintf("k%d", i)),
			Value:     sarama.StringEncoder(fmt.Sprintf("%s-%06d", a.prefix, i)),
			Metadata:  i,
		}
	}
	wg.Wait()
	if err := producer.Close(); err != nil {
		return err
	}
	if failure != nil {
		return failure
	}
	w := bufio.NewWriter(os.Stdout)
	for i, k := range acks {
		fmt.Fprintf(w, "%d %d %s-%06d\n", k.partition, k.offset, a.prefix, i)
	}
	return w.Flush()
}

type member struct {
	out *bufio.Writer
	mu  *sync.Mutex
}

func (m member) Setup(s sarama.ConsumerGroupSession) error {
	var partitions []int
	for _, ps := range s.Claims() {
		for _, p := range ps {
			partitions = append(partitions, int(p))
		}
	}
	sort.Ints(partitions)
	words := []string{"assigned"}
	for _, p := range partitions {
		words = append(words, fmt.Sprint(p))
	}
	common.Event(words...)
	return nil
}

func (m member) Cleanup(s sarama.ConsumerGroupSession) error {
	common.Event("revoked", fmt.Sprint(s.GenerationID()))
	return nil
}

func (m member) ConsumeClaim(s sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for msg := range claim.Messages() {
		m.mu.Lock()
		fmt.Fprintf(m.out, "%d %d %s\n", msg.Partition, msg.Offset, msg.Value)
		m.out.Flush()
		m.mu.Unlock()
		s.MarkMessage(msg, "")
	}
	return nil
}

func groupConsumer(a args) error {
	c := config(a)
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Offsets.Retention = 24 * time.Hour
	c.Consumer.Offsets.CommitInterval = 200 * time.Millisecond
	c.Consumer.Group.Session.Timeout = 10 * time.Second
	c.Consumer.Group.Heartbeat.Interval = 1 * time.Second
	c.Consumer.Return.Errors = true
	c.Consumer.MaxWaitTime = 500 * time.Millisecond
	group, err := sarama.NewConsumerGroup(addrs(a), a.group, c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-signals
		common.Event("signal", s.String())
		cancel()
	}()
	if a.exitOnEOF {
		go func() {
			buf := make([]byte, 64)
			for {
				if _, err := os.Stdin.Read(buf); err != nil {
					common.Event("stdin-eof")
					cancel()
					return
				}
			}
		}()
	}
	go func() {
		for e := range group.Errors() {
			common.Event("error", strings.ReplaceAll(e.Error(), "\n", " "))
		}
	}()
	common.Event("started", a.name)
	handler := member{out: bufio.NewWriter(os.Stdout), mu: &sync.Mutex{}}
	var failure error
	for ctx.Err() == nil {
		// Returns at each rebalance (after committing what was marked) and when ctx ends.
		if err := group.Consume(ctx, []string{a.topic}, handler); err != nil {
			if ctx.Err() != nil {
				break
			}
			common.Event("consume-error", strings.ReplaceAll(err.Error(), "\n", " "))
			failure = err
			break
		}
	}
	// Close commits the marked offsets and leaves the group.
	if err := group.Close(); err != nil && failure == nil {
		failure = err
	}
	common.Event("closed", a.name)
	return failure
}
