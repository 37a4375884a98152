package hub

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/sendense/sendense/schemas"
)

// The body of the system sendense replaces, accepted by POST
// /api/v1/backups so that its runbooks keep working:
//
//	{"vm_name":"pgtest1","repository_id":"1","backup_type":"full"}
//
// vm_name is vm; repository_id names a repository through the API's
// RepositoryIDs (default {"1": "default"}); backup_type and job_id are as
// in the native body. Nothing else may be in it: mixing the two forms
// (vm_name with vm, repository_id with repository) or an unknown field is
// a 400, as is a repository_id with no mapping.

// DefaultRepositoryIDs maps the replaced system's repository_id "1", its
// first repository, to the default repository.
var DefaultRepositoryIDs = map[string]string{"1": schemas.DefaultRepository}

// legacyFields are the fields of the replaced system's body that mark it;
// nativeFields the native fields that may not be mixed with them.
var (
	legacyFields = []string{"vm_name", "repository_id"}
	legacyAllow  = []string{"vm_name", "repository_id", "backup_type", "job_id"}
	nativeFields = []string{"vm", "repository"}
)

// legacyRequest turns a body in the replaced system's form into the
// native body, or returns (nil, nil) for a body that is not in that form
// (it is then decoded as a native request). ids maps repository_id to a
// repository name.
func legacyRequest(body []byte, ids map[string]string) ([]byte, error) {
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) != nil {
		return nil, nil // not an object: the native decoder says why
	}
	if !slices.ContainsFunc(legacyFields, func(f string) bool { _, ok := fields[f]; return ok }) {
		return nil, nil
	}
	if mixed := slices.DeleteFunc(slices.Clone(nativeFields), func(f string) bool { _, ok := fields[f]; return !ok }); len(mixed) > 0 {
		return nil, fmt.Errorf("the body mixes the native form (%s) with the legacy one (vm_name, repository_id): use one", strings.Join(mixed, ", "))
	}
	var extra []string
	for f := range fields {
		if !slices.Contains(legacyAllow, f) {
			extra = append(extra, f)
		}
	}
	if len(extra) > 0 {
		slices.Sort(extra)
		return nil, fmt.Errorf("legacy body (vm_name, repository_id): field %s not allowed (allowed: %s)", strings.Join(extra, ", "), strings.Join(legacyAllow, ", "))
	}
	var in struct {
		VM         string `json:"vm_name"`
		BackupType string `json:"backup_type,omitempty"`
		JobID      string `json:"job_id,omitempty"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&in); err != nil {
		return nil, fmt.Errorf("legacy body: %w", err)
	}
	if in.VM == "" {
		return nil, fmt.Errorf("legacy body: vm_name is required")
	}
	out := map[string]string{"vm": in.VM}
	if raw, ok := fields["repository_id"]; ok {
		id, err := repositoryID(raw)
		if err != nil {
			return nil, err
		}
		name, ok := ids[id]
		if !ok {
			known := slices.Sorted(maps.Keys(ids))
			return nil, fmt.Errorf("repository_id %q names no repository (known: %s)", id, strings.Join(known, ", "))
		}
		out["repository"] = name
	}
	if in.BackupType != "" {
		out["backup_type"] = in.BackupType
	}
	if in.JobID != "" {
		out["job_id"] = in.JobID
	}
	return json.Marshal(out)
}

// repositoryID reads repository_id, which the replaced system sends as a
// string ("1") and some of its clients as a number (1).
func repositoryID(raw json.RawMessage) (string, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil && s != "" {
		return s, nil
	}
	var n json.Number
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if d.Decode(&n) == nil && !strings.ContainsAny(n.String(), ".eE-") {
		return n.String(), nil
	}
	return "", fmt.Errorf("repository_id %s: want a repository id such as \"1\"", raw)
}
