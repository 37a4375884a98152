/* shim.h: small C wrappers around libnbd used by the Go binding.
 *
 * libnbd keeps the last error in thread-local storage, and a goroutine may
 * move to another OS thread between two cgo calls. Every wrapper that can
 * fail therefore copies the error (errno and message) into an sd_err in the
 * same C call that failed. The caller frees sd_err.msg.
 */
#ifndef SENDENSE_NBD_SHIM_H
#define SENDENSE_NBD_SHIM_H

#include <stdint.h>
#include <stddef.h>
#include <libnbd.h>

typedef struct {
  int set;   /* 1 when an error was captured */
  int err;   /* nbd_get_errno(), 0 if unknown */
  char *msg; /* strdup(nbd_get_error()), may be NULL; caller frees */
} sd_err;

/* Connection states reported by sd_state. */
enum {
  SD_CONNECTING = 0,
  SD_READY = 1,
  SD_DEAD = 2,
  SD_CLOSED = 3,
};

/* Capabilities read once after the handshake (sd_caps). */
typedef struct {
  int64_t size;
  int read_only, can_flush, can_fua, can_trim, can_zero, can_fast_zero,
      can_multi_conn, can_cache, can_df;
  int64_t block_min, block_pref, block_max;
} sd_caps;

/* Extents collected by an aio block status for one meta context. */
typedef struct {
  char *want;        /* meta context to keep (owned, strdup) */
  uint32_t *ents;    /* (length, flags) pairs */
  size_t n;          /* number of uint32 in ents (2 per extent) */
  size_t cap;
  uint64_t offset;   /* offset of the first extent */
  int seen;          /* the wanted context replied */
  int oom;
} sd_extents;

struct nbd_handle *sd_create(sd_err *e);
int sd_add_meta_context(struct nbd_handle *h, const char *name, sd_err *e);
/* Requires TLS (LIBNBD_TLS_REQUIRE) with the pre-shared key of username
 * read from file (GnuTLS psk file format, "username:hexkey"). */
int sd_set_tls_psk(struct nbd_handle *h, const char *username, const char *file, sd_err *e);
int sd_aio_connect_uri(struct nbd_handle *h, const char *uri, sd_err *e);
int sd_state(struct nbd_handle *h);
int sd_caps_read(struct nbd_handle *h, sd_caps *c, sd_err *e);
int sd_can_meta_context(struct nbd_handle *h, const char *name, sd_err *e);

int64_t sd_aio_pread(struct nbd_handle *h, void *buf, size_t n, uint64_t off, sd_err *e);
int64_t sd_aio_pwrite(struct nbd_handle *h, const void *buf, size_t n, uint64_t off, uint32_t flags, sd_err *e);
int64_t sd_aio_zero(struct nbd_handle *h, uint64_t n, uint64_t off, uint32_t flags, sd_err *e);
int64_t sd_aio_trim(struct nbd_handle *h, uint64_t n, uint64_t off, uint32_t flags, sd_err *e);
int64_t sd_aio_flush(struct nbd_handle *h, sd_err *e);
int64_t sd_aio_block_status(struct nbd_handle *h, uint64_t n, uint64_t off, sd_extents *x, sd_err *e);
int sd_aio_disconnect(struct nbd_handle *h, sd_err *e);

/* Returns 1 and the cookie when a command completed successfully, 2 and the
 * cookie (with *e set) when it completed with an error, 0 when none is
 * waiting to be retired. */
int sd_next_completed(struct nbd_handle *h, int64_t *cookie, sd_err *e);
/* Like nbd_aio_command_completed for one cookie: 1 done, 0 in flight, -1 failed. */
int sd_command_completed(struct nbd_handle *h, int64_t cookie, sd_err *e);
int sd_in_flight(struct nbd_handle *h);

/* Waits up to timeout_ms for any of the n handles to become ready for the
 * direction libnbd wants, then notifies libnbd. Returns the number of
 * handles notified, 0 on timeout or EINTR (the caller retries), or -1 with
 * *bad set to the index of the handle whose notify failed and *e set. A
 * return of -2 means poll(2) itself failed (errno in e->err). */
int sd_poll(struct nbd_handle **hs, int n, int timeout_ms, int *bad, sd_err *e);

/* On a unix socket, raises the send buffer to SD_UNIX_SNDBUF (as far as
 * privileges and net.core.wmem_max allow; best effort). A unix stream
 * socket's sender buffer bounds how much one send(2) moves before the
 * sender sleeps until the peer reads: with the default 208 KiB a 4 MiB
 * write wakes both sides about 40 times. TCP sockets are left to the
 * kernel's autotuning. */
#define SD_UNIX_SNDBUF (4 << 20)
void sd_tune_socket(struct nbd_handle *h);

/* shutdown(2) the handle's socket so libnbd sees EOF and retires every
 * in-flight command with ENOTCONN at the next notify. */
void sd_kill(struct nbd_handle *h);

sd_extents *sd_extents_new(const char *want);
void sd_extents_free(sd_extents *x);

#endif
