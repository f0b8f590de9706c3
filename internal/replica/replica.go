// Package replica names this worker process among the replicas sharing one
// database, for study leases and outbox claims.
package replica

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
)

// Name returns a name unique to this process: host, pid and a random
// suffix, so two containers with the same hostname and pid still differ.
func Name() string {
	host, _ := os.Hostname()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", cmp.Or(host, "worker"), os.Getpid(), hex.EncodeToString(b[:]))
}
