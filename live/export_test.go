package live

import "context"

// Resync runs b's catch-up as a reconnect of its listener would.
func Resync(b *Broker) { b.resync(context.Background()) }
