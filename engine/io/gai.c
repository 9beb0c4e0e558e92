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
#define _GNU_SOURCE   /* AI_IDN, EAI_ADDRFAMILY, EAI_NODATA */
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

int braid__gai_start (uv_loop_t *loop, struct braid_gai **out,
                      const char *host, const char *service,
                      const struct addrinfo *hints, braid_gai_cb cb,
                      void *data) {
  size_t hl = strlen(host), sl = service ? strlen(service) : 0;
  struct braid_gai *g = (struct braid_gai *)
    braid__calloc(1, sizeof *g + hl + 1 + (service ? sl + 1 : 0));
  const unsigned char *p;
  int rc;
  if (g == NULL) return UV_ENOMEM;
  memcpy(g->name, host, hl + 1);
  if (service) {
    g->service = g->name + hl + 1;
    memcpy(g->service, service, sl + 1);
  }
  if (hints) g->hints = *hints;
  /* As uv_getaddrinfo does with its own IDNA code: a name beyond ASCII is
  ** looked up in its punycode form. */
  for (p = (const unsigned char *) host; *p; p++)
    if (*p >= 0x80) {
      g->hints.ai_flags |= AI_IDN;
      break;
    }
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
