package backup

import "errors"

// ErrNotFound is what the catalog answers (store.Catalog and the catalog
// service's clients alike) when there is no such job, or no completed
// backup of that disk. Match it with errors.Is.
var ErrNotFound = errors.New("not found")
