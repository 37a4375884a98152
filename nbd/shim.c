#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include "shim.h"

static void capture(sd_err *e) {
  const char *m = nbd_get_error();
  e->set = 1;
  e->err = nbd_get_errno();
  e->msg = m ? strdup(m) : NULL;
}

struct nbd_handle *sd_create(sd_err *e) {
  struct nbd_handle *h = nbd_create();
  if (h == NULL) {
    capture(e);
    return NULL;
  }
  /* libnbd zeroes a read's buffer before reading by default, so that a
   * caller ignoring errors never sees old heap contents. Buffers here are
   * used only after a read succeeded, and hold only data read through the
   * same kind of handle; the memset costs a pass over every byte read. */
  if (nbd_set_pread_initialize(h, false) == -1) {
    capture(e);
    nbd_close(h);
    return NULL;
  }
  return h;
}

int sd_add_meta_context(struct nbd_handle *h, const char *name, sd_err *e) {
  int r = nbd_add_meta_context(h, name);
  if (r == -1) capture(e);
  return r;
}

int sd_set_tls_psk(struct nbd_handle *h, const char *username, const char *file, sd_err *e) {
  if (nbd_set_tls(h, LIBNBD_TLS_REQUIRE) == -1 ||
      nbd_set_tls_username(h, username) == -1 ||
      nbd_set_tls_psk_file(h, file) == -1) {
    capture(e);
    return -1;
  }
  return 0;
}

int sd_aio_connect_uri(struct nbd_handle *h, const char *uri, sd_err *e) {
  int r = nbd_aio_connect_uri(h, uri);
  if (r == -1) capture(e);
  return r;
}

int sd_state(struct nbd_handle *h) {
  if (nbd_aio_is_ready(h) == 1 || nbd_aio_is_processing(h) == 1) return SD_READY;
  if (nbd_aio_is_dead(h) == 1) return SD_DEAD;
  if (nbd_aio_is_closed(h) == 1) return SD_CLOSED;
  return SD_CONNECTING;
}

static int flag(struct nbd_handle *h, int (*f)(struct nbd_handle *), int *out, sd_err *e) {
  int r = f(h);
  if (r == -1) {
    capture(e);
    return -1;
  }
  *out = r;
  return 0;
}

int sd_caps_read(struct nbd_handle *h, sd_caps *c, sd_err *e) {
  c->size = nbd_get_size(h);
  if (c->size == -1) {
    capture(e);
    return -1;
  }
  if (flag(h, nbd_is_read_only, &c->read_only, e) ||
      flag(h, nbd_can_flush, &c->can_flush, e) ||
      flag(h, nbd_can_fua, &c->can_fua, e) ||
      flag(h, nbd_can_trim, &c->can_trim, e) ||
      flag(h, nbd_can_zero, &c->can_zero, e) ||
      flag(h, nbd_can_fast_zero, &c->can_fast_zero, e) ||
      flag(h, nbd_can_multi_conn, &c->can_multi_conn, e) ||
      flag(h, nbd_can_cache, &c->can_cache, e) ||
      flag(h, nbd_can_df, &c->can_df, e))
    return -1;
  /* Block size constraints are optional: 0 when the server sent none. */
  c->block_min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
  c->block_pref = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
  c->block_max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  if (c->block_min < 0) c->block_min = 0;
  if (c->block_pref < 0) c->block_pref = 0;
  if (c->block_max < 0) c->block_max = 0;
  return 0;
}

int sd_can_meta_context(struct nbd_handle *h, const char *name, sd_err *e) {
  int r = nbd_can_meta_context(h, name);
  if (r == -1) capture(e);
  return r;
}

int64_t sd_aio_pread(struct nbd_handle *h, void *buf, size_t n, uint64_t off, sd_err *e) {
  int64_t c = nbd_aio_pread(h, buf, n, off, NBD_NULL_COMPLETION, 0);
  if (c == -1) capture(e);
  return c;
}

int64_t sd_aio_pwrite(struct nbd_handle *h, const void *buf, size_t n, uint64_t off, uint32_t flags, sd_err *e) {
  int64_t c = nbd_aio_pwrite(h, buf, n, off, NBD_NULL_COMPLETION, flags);
  if (c == -1) capture(e);
  return c;
}

int64_t sd_aio_zero(struct nbd_handle *h, uint64_t n, uint64_t off, uint32_t flags, sd_err *e) {
  int64_t c = nbd_aio_zero(h, n, off, NBD_NULL_COMPLETION, flags);
  if (c == -1) capture(e);
  return c;
}

int64_t sd_aio_trim(struct nbd_handle *h, uint64_t n, uint64_t off, uint32_t flags, sd_err *e) {
  int64_t c = nbd_aio_trim(h, n, off, NBD_NULL_COMPLETION, flags);
  if (c == -1) capture(e);
  return c;
}

int64_t sd_aio_flush(struct nbd_handle *h, sd_err *e) {
  int64_t c = nbd_aio_flush(h, NBD_NULL_COMPLETION, 0);
  if (c == -1) capture(e);
  return c;
}

static int extent_cb(void *user_data, const char *metacontext, uint64_t offset,
                     uint32_t *entries, size_t nr_entries, int *error) {
  sd_extents *x = user_data;
  (void)error;
  if (strcmp(metacontext, x->want) != 0) return 0;
  if (!x->seen) {
    x->seen = 1;
    x->offset = offset;
  }
  if (x->n + nr_entries > x->cap) {
    size_t cap = x->cap ? x->cap : 64;
    while (cap < x->n + nr_entries) cap *= 2;
    uint32_t *p = realloc(x->ents, cap * sizeof(uint32_t));
    if (p == NULL) {
      x->oom = 1;
      return 0;
    }
    x->ents = p;
    x->cap = cap;
  }
  memcpy(x->ents + x->n, entries, nr_entries * sizeof(uint32_t));
  x->n += nr_entries;
  return 0;
}

int64_t sd_aio_block_status(struct nbd_handle *h, uint64_t n, uint64_t off, sd_extents *x, sd_err *e) {
  nbd_extent_callback cb = {.callback = extent_cb, .user_data = x, .free = NULL};
  int64_t c = nbd_aio_block_status(h, n, off, cb, NBD_NULL_COMPLETION, 0);
  if (c == -1) capture(e);
  return c;
}

int sd_aio_disconnect(struct nbd_handle *h, sd_err *e) {
  int r = nbd_aio_disconnect(h, 0);
  if (r == -1) capture(e);
  return r;
}

int sd_next_completed(struct nbd_handle *h, int64_t *cookie, sd_err *e) {
  int64_t c = nbd_aio_peek_command_completed(h);
  if (c <= 0) return 0; /* none waiting, or nothing in flight */
  *cookie = c;
  int r = nbd_aio_command_completed(h, (uint64_t)c);
  if (r == 1) return 1;
  if (r == -1) {
    capture(e);
    return 2;
  }
  return 0;
}

int sd_command_completed(struct nbd_handle *h, int64_t cookie, sd_err *e) {
  int r = nbd_aio_command_completed(h, (uint64_t)cookie);
  if (r == -1) capture(e);
  return r;
}

int sd_in_flight(struct nbd_handle *h) {
  int r = nbd_aio_in_flight(h);
  return r < 0 ? 0 : r;
}

#define SD_MAX_POLL 16

int sd_poll(struct nbd_handle **hs, int n, int timeout_ms, int *bad, sd_err *e) {
  struct pollfd fds[SD_MAX_POLL];
  unsigned dirs[SD_MAX_POLL];
  int i, active = 0;
  if (n > SD_MAX_POLL) n = SD_MAX_POLL;
  for (i = 0; i < n; i++) {
    fds[i].fd = -1;
    fds[i].events = 0;
    fds[i].revents = 0;
    dirs[i] = 0;
    if (hs[i] == NULL) continue;
    int fd = nbd_aio_get_fd(hs[i]);
    if (fd < 0) continue;
    unsigned d = nbd_aio_get_direction(hs[i]);
    if (d & LIBNBD_AIO_DIRECTION_READ) fds[i].events |= POLLIN;
    if (d & LIBNBD_AIO_DIRECTION_WRITE) fds[i].events |= POLLOUT;
    if (fds[i].events == 0) continue;
    fds[i].fd = fd;
    dirs[i] = d;
    active++;
  }
  if (active == 0) return 0;
  int r = poll(fds, (nfds_t)n, timeout_ms);
  if (r == -1) {
    if (errno == EINTR || errno == EAGAIN) return 0;
    e->set = 1;
    e->err = errno;
    e->msg = strdup("poll");
    return -2;
  }
  if (r == 0) return 0;
  int notified = 0;
  for (i = 0; i < n; i++) {
    short rev = fds[i].revents;
    if (fds[i].fd < 0 || rev == 0) continue;
    if ((dirs[i] & LIBNBD_AIO_DIRECTION_READ) && (rev & (POLLIN | POLLHUP | POLLERR))) {
      if (nbd_aio_notify_read(hs[i]) == -1) {
        *bad = i;
        capture(e);
        return -1;
      }
    } else if ((dirs[i] & LIBNBD_AIO_DIRECTION_WRITE) && (rev & (POLLOUT | POLLHUP | POLLERR))) {
      if (nbd_aio_notify_write(hs[i]) == -1) {
        *bad = i;
        capture(e);
        return -1;
      }
    }
    notified++;
  }
  return notified;
}

void sd_tune_socket(struct nbd_handle *h) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int fd = nbd_aio_get_fd(h);
  if (fd < 0 || getsockname(fd, (struct sockaddr *)&ss, &len) == -1 || ss.ss_family != AF_UNIX) return;
  int n = SD_UNIX_SNDBUF;
  /* SO_SNDBUFFORCE needs CAP_NET_ADMIN; SO_SNDBUF is capped by
   * net.core.wmem_max. Either way the kernel doubles n. */
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &n, sizeof n) == -1)
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof n);
}

void sd_kill(struct nbd_handle *h) {
  int fd = nbd_aio_get_fd(h);
  if (fd >= 0) shutdown(fd, SHUT_RDWR);
}

sd_extents *sd_extents_new(const char *want) {
  sd_extents *x = calloc(1, sizeof *x);
  if (x == NULL) return NULL;
  x->want = strdup(want);
  if (x->want == NULL) {
    free(x);
    return NULL;
  }
  return x;
}

void sd_extents_free(sd_extents *x) {
  if (x == NULL) return;
  free(x->want);
  free(x->ents);
  free(x);
}
