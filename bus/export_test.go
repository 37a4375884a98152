package bus

// StoreRestarts returns how often the store watchdog restarted JetStream.
func (e *Embedded) StoreRestarts() int64 { return e.watch.restarts.Load() }

// StoreWatchDone is closed when the store watchdog's goroutine has ended.
func (e *Embedded) StoreWatchDone() <-chan struct{} { return e.watch.done }
