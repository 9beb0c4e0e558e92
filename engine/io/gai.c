/*
** gai.c: getaddrinfo on braid's own detached threads, with results handed
** to the loop through a uv_async_t the engine can close.
**
** Why not uv_getaddrinfo: a started lookup cannot be cancelled, and its
** request keeps the loop alive until getaddrinfo returns, so a lookup that
** was cancelled or timed out still held up the exit, braid_close and
** uv_loop_close (3 s behind a slow resolver, tens of seconds behind a dead
** one). Here a lookup is a malloc'd struct braid_gai shared by two
** owners: the loop side (its uv_async_t, until the close callback) and the
** pool (queued or in getaddrinfo on a thread). Invariants:
** - Every shared field is read and written under gai_lock; the last owner
**   to let go frees the struct (and any addrinfo list still in it).
** - The thread calls uv_async_send only under gai_lock and only while the
**   lookup is not abandoned, and abandoning sets the flag under gai_lock
**   before uv_close: so no send ever reaches a closing handle. A thread
**   that finishes an abandoned lookup frees the result itself; it never
**   touches the loop, which may be gone.
** - At most GAI_THREADS threads work for lookups somebody waits for; more
**   lookups wait in a FIFO queue, and an abandoned one still queued leaves
**   it at once. A thread stuck in an abandoned lookup does not count, so
**   lookups given up on a dead resolver do not hold up later ones, but no
**   more than GAI_MAX_THREADS threads ever run. A thread takes lookups from
**   the queue until it is empty, then ends.
** - Every live lookup is on one global list, so LeakSanitizer sees a
**   lookup whose thread is still asleep in getaddrinfo as reachable when
**   the process exits under it.
** - The threads take no signals (they stay with the loop's thread), and
**   braid.so pins itself in memory (RTLD_NODELETE) before the first thread
**   starts: stock lua5.4 unloads C modules at lua_close, and a thread
**   returning from getaddrinfo into unmapped code would crash.
*/
#define _GNU_SOURCE   /* EAI_ADDRFAMILY, EAI_NODATA */
#include <assert.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "core/prim.h"
#include "io/gai.h"

#define GAI_THREADS 8
#define GAI_MAX_THREADS 64

struct braid_gai {
  uv_async_t async;              /* the loop side's; closed once */
  braid_gai_cb cb;
  void *data;
  struct braid_gai *next_q;      /* the queue, while waiting for a thread */
  struct braid_gai *prev, *next; /* the list of live lookups */
  struct addrinfo hints;
  struct addrinfo *res;          /* the outcome, until delivered or freed */
  int status;
  unsigned char queued, pool_done, abandoned, closed;
  char *service;                 /* NULL or into name[] after the host */
  char name[];                   /* the host, then the service */
};

static pthread_mutex_t gai_lock = PTHREAD_MUTEX_INITIALIZER;
static struct braid_gai *gai_live;                   /* all, for LSan */
static struct braid_gai *gai_qhead, *gai_qtail;     /* waiting */
static int gai_nthreads;     /* running */
static int gai_nstuck;       /* of them, in an abandoned lookup */

/* Frees a lookup both owners have let go of (gai_lock not held). */
static void gai_free (struct braid_gai *g) {
  pthread_mutex_lock(&gai_lock);
  if (g->prev) g->prev->next = g->next;
  else gai_live = g->next;
  if (g->next) g->next->prev = g->prev;
  pthread_mutex_unlock(&gai_lock);
  if (g->res) freeaddrinfo(g->res);
  free(g);
}

/* getaddrinfo's error as libuv's uv_getaddrinfo reports it. */
static int gai_status (int rc, int err) {
  switch (rc) {
    case 0: return 0;
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY: return UV_EAI_ADDRFAMILY;
#endif
    case EAI_AGAIN: return UV_EAI_AGAIN;
    case EAI_BADFLAGS: return UV_EAI_BADFLAGS;
#ifdef EAI_CANCELED
    case EAI_CANCELED: return UV_EAI_CANCELED;
#endif
    case EAI_FAIL: return UV_EAI_FAIL;
    case EAI_FAMILY: return UV_EAI_FAMILY;
    case EAI_MEMORY: return UV_EAI_MEMORY;
#ifdef EAI_NODATA
    case EAI_NODATA: return UV_EAI_NODATA;
#endif
    case EAI_NONAME: return UV_EAI_NONAME;
    case EAI_OVERFLOW: return UV_EAI_OVERFLOW;
    case EAI_SERVICE: return UV_EAI_SERVICE;
    case EAI_SOCKTYPE: return UV_EAI_SOCKTYPE;
    case EAI_SYSTEM: return err > 0 ? -err : UV_EAI_FAIL;
    default: return UV_EAI_FAIL;
  }
}

/* Takes the next queued lookup for a thread, or NULL (gai_lock held). */
static struct braid_gai *gai_take (void) {
  struct braid_gai *g = gai_qhead;
  if (g == NULL) return NULL;
  gai_qhead = g->next_q;
  if (gai_qhead == NULL) gai_qtail = NULL;
  g->next_q = NULL;
  g->queued = 0;
  return g;
}

/* Takes a lookup no thread has out of the queue: the pool is done with it
** (gai_lock held). */
static void gai_unqueue (struct braid_gai *g) {
  struct braid_gai **pp = &gai_qhead, *last = NULL;
  while (*pp != g) last = *pp, pp = &(*pp)->next_q;
  *pp = g->next_q;
  if (gai_qtail == g) gai_qtail = last;
  g->next_q = NULL;
  g->queued = 0;
  g->pool_done = 1;
}

static void *gai_main (void *arg) {
  struct braid_gai *g;
  (void) arg;
  pthread_mutex_lock(&gai_lock);
  while ((g = gai_take()) != NULL) {
    struct addrinfo *res = NULL;
    int rc, err, free_now = 0;
    pthread_mutex_unlock(&gai_lock);
    errno = 0;
    rc = getaddrinfo(g->name, g->service, &g->hints, &res);
    err = errno;
    pthread_mutex_lock(&gai_lock);
    g->pool_done = 1;
    if (g->abandoned) {
      gai_nstuck--;
      free_now = g->closed;   /* else the close callback frees it */
      if (res) g->res = res;  /* freed with g, by whoever frees it */
    } else {
      g->res = res;
      g->status = gai_status(rc, err);
      uv_async_send(&g->async);
    }
    if (free_now) {
      pthread_mutex_unlock(&gai_lock);
      gai_free(g);
      pthread_mutex_lock(&gai_lock);
    }
  }
  gai_nthreads--;
  pthread_mutex_unlock(&gai_lock);
  return NULL;
}

static void gai_pin (void) {
  static int pinned;
  Dl_info info;
  if (__atomic_exchange_n(&pinned, 1, __ATOMIC_RELAXED)) return;
  if (dladdr((void *) gai_pin, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* Starts one more detached thread if the queue needs one (gai_lock held);
** 0 or a libuv code. */
static int gai_thread_start (void) {
  pthread_t th;
  pthread_attr_t attr;
  sigset_t all, old;
  int rc;
  if (gai_qhead == NULL || gai_nthreads - gai_nstuck >= GAI_THREADS ||
      gai_nthreads >= GAI_MAX_THREADS)
    return 0;
  gai_pin();
  if (pthread_attr_init(&attr) != 0) return UV_ENOMEM;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&th, &attr, gai_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (rc != 0) return rc == ENOMEM ? UV_ENOMEM : UV_EAGAIN;
  gai_nthreads++;
  return 0;
}

static void gai_close_cb (uv_handle_t *h) {
  struct braid_gai *g = container_of(h, struct braid_gai, async);
  int free_now;
  pthread_mutex_lock(&gai_lock);
  g->closed = 1;
  free_now = g->pool_done;
  pthread_mutex_unlock(&gai_lock);
  if (free_now) gai_free(g);
}

static void gai_async_cb (uv_async_t *a) {
  struct braid_gai *g = container_of(a, struct braid_gai, async);
  struct addrinfo *res;
  int status;
  pthread_mutex_lock(&gai_lock);
  res = g->res;
  g->res = NULL;
  status = g->status;
  g->abandoned = 1;   /* delivered: nothing more is sent */
  pthread_mutex_unlock(&gai_lock);
  uv_close((uv_handle_t *) &g->async, gai_close_cb);
  g->cb(g, status, res);
}

/* ---- IDNA, as uv_getaddrinfo does it ----
** A label beyond ASCII is looked up as "xn--" and its Punycode (RFC 3492);
** labels end at '.', U+3002, U+FF0E and U+FF61. The name is not
** otherwise normalised (nor is it by libuv). */

/* The next code point of UTF-8 at *s (advanced), or -1 when invalid. */
static long gai_utf8 (const unsigned char **s) {
  const unsigned char *p = *s;
  long c = *p++;
  int n, i;
  if (c < 0x80) n = 0;
  else if ((c & 0xe0) == 0xc0) c &= 0x1f, n = 1;
  else if ((c & 0xf0) == 0xe0) c &= 0x0f, n = 2;
  else if ((c & 0xf8) == 0xf0) c &= 0x07, n = 3;
  else return -1;
  for (i = 0; i < n; i++, p++) {
    if ((*p & 0xc0) != 0x80) return -1;
    c = (c << 6) | (*p & 0x3f);
  }
  if ((n == 1 && c < 0x80) || (n == 2 && c < 0x800) ||
      (n == 3 && (c < 0x10000 || c > 0x10ffff)) ||
      (c >= 0xd800 && c <= 0xdfff))
    return -1;
  *s = p;
  return c;
}

static unsigned gai_adapt (unsigned delta, unsigned npoints, int first) {
  unsigned k = 0;
  delta = first ? delta / 700 : delta / 2;
  delta += delta / npoints;
  while (delta > 455) {   /* ((36 - 1) * 26) / 2 */
    delta /= 35;
    k += 36;
  }
  return k + (36 * delta) / (delta + 38);
}

/* Appends the label's code points cp[0..len) to out at *o, as is when all
** are ASCII, else as "xn--" and their Punycode; 0 or UV_EINVAL. */
static int gai_label (const long *cp, unsigned len, char *out, size_t *o,
                      size_t size) {
  unsigned i, b = 0, h, delta = 0, bias = 72;
  long n = 128;
#define PUT(ch) do { if (*o + 1 >= size) return UV_EINVAL; \
                     out[(*o)++] = (char) (ch); } while (0)
  for (i = 0; i < len; i++) b += cp[i] < 0x80;
  if (b == len) {
    for (i = 0; i < len; i++) PUT(cp[i]);
    return 0;
  }
  PUT('x'); PUT('n'); PUT('-'); PUT('-');
  for (i = 0; i < len; i++)
    if (cp[i] < 0x80) PUT(cp[i]);
  if (b > 0) PUT('-');
  for (h = b; h < len; n++, delta++) {
    long m = 0x110000;
    for (i = 0; i < len; i++)
      if (cp[i] >= n && cp[i] < m) m = cp[i];
    if ((unsigned long) (m - n) > (0xffffffffu - delta) / (h + 1))
      return UV_EINVAL;
    delta += (unsigned) (m - n) * (h + 1);
    n = m;
    for (i = 0; i < len; i++) {
      if (cp[i] < n && ++delta == 0) return UV_EINVAL;
      if (cp[i] == n) {
        unsigned q = delta, k;
        for (k = 36;; k += 36) {
          unsigned t = k <= bias ? 1 : k >= bias + 26 ? 26 : k - bias, d;
          if (q < t) break;
          d = t + (q - t) % (36 - t);
          PUT(d < 26 ? 'a' + d : '0' + d - 26);
          q = (q - t) / (36 - t);
        }
        PUT(q < 26 ? 'a' + q : '0' + q - 26);
        bias = gai_adapt(delta, h + 1, h == b);
        delta = 0;
        h++;
      }
    }
  }
#undef PUT
  return 0;
}

/* host in ASCII (NUL-terminated in out), or UV_EINVAL: not UTF-8, or
** longer than size. */
static int gai_idna (const char *host, char *out, size_t size) {
  const unsigned char *s = (const unsigned char *) host;
  long cp[256];
  unsigned len = 0;
  size_t o = 0;
  int rc;
  for (;;) {
    long c = *s ? gai_utf8(&s) : 0;
    if (c < 0) return UV_EINVAL;
    if (c == 0 || c == '.' || c == 0x3002 || c == 0xff0e || c == 0xff61) {
      if ((rc = gai_label(cp, len, out, &o, size)) != 0) return rc;
      len = 0;
      if (c == 0) break;
      if (o + 1 >= size) return UV_EINVAL;
      out[o++] = '.';
    } else {
      if (len == sizeof cp / sizeof cp[0]) return UV_EINVAL;
      cp[len++] = c;
    }
  }
  out[o] = '\0';
  return 0;
}

int braid__gai_start (uv_loop_t *loop, struct braid_gai **out,
                      const char *host, const char *service,
                      const struct addrinfo *hints, braid_gai_cb cb,
                      void *data) {
  char ascii[256];
  size_t hl, sl = service ? strlen(service) : 0;
  struct braid_gai *g;
  int rc;
  if ((rc = gai_idna(host, ascii, sizeof ascii)) != 0) return rc;
  host = ascii;
  hl = strlen(host);
  g = (struct braid_gai *)
    braid__calloc(1, sizeof *g + hl + 1 + (service ? sl + 1 : 0));
  if (g == NULL) return UV_ENOMEM;
  memcpy(g->name, host, hl + 1);
  if (service) {
    g->service = g->name + hl + 1;
    memcpy(g->service, service, sl + 1);
  }
  if (hints) g->hints = *hints;
  g->cb = cb;
  g->data = data;
  if ((rc = uv_async_init(loop, &g->async, gai_async_cb)) != 0) {
    free(g);
    return rc;
  }
  pthread_mutex_lock(&gai_lock);
  g->next = gai_live;
  if (gai_live) gai_live->prev = g;
  gai_live = g;
  g->queued = 1;
  if (gai_qtail) gai_qtail->next_q = g;
  else gai_qhead = g;
  gai_qtail = g;
  rc = gai_thread_start();
  if (rc != 0 && gai_nthreads > 0) rc = 0;   /* a running one takes it */
  if (rc != 0) {                             /* nobody would: undo */
    gai_unqueue(g);
    g->abandoned = 1;
  }
  pthread_mutex_unlock(&gai_lock);
  if (rc != 0) {
    uv_close((uv_handle_t *) &g->async, gai_close_cb);   /* frees g */
    return rc;
  }
  *out = g;
  return 0;
}

void *braid__gai_data (struct braid_gai *g) {
  return g->data;
}

void braid__gai_abandon (struct braid_gai *g) {
  pthread_mutex_lock(&gai_lock);
  assert(!g->abandoned);
  g->abandoned = 1;
  if (g->queued)     /* no thread has it: out of the queue */
    gai_unqueue(g);
  else if (!g->pool_done) {   /* stuck in getaddrinfo: one more may start */
    gai_nstuck++;
    gai_thread_start();       /* on failure the others take the queue */
  }
  pthread_mutex_unlock(&gai_lock);
  uv_close((uv_handle_t *) &g->async, gai_close_cb);
}
