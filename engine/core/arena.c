/*
** arena.c: the allocator of braid's Lua states. Small blocks (up to
** ARENA_SMALL bytes, nearly everything Lua allocates: strings, tables,
** closures, coroutines and their stacks, task userdata) come from 2 MB
** regions the kernel may back with transparent huge pages; bigger blocks
** go to malloc. A fresh process that spawns 100k tasks then takes a few
** dozen 2 MB page faults instead of tens of thousands of 4 KB ones (half
** of W1's cold time was first-touch faults: docs/internals.md).
**
** Invariants:
** - A block is the arena's exactly when its address lies in one of the
**   arena's regions (region_owns); every other block (large ones, those
**   of the allocator the state had before braid took it over, small ones
**   made while no region could be mapped) belongs to `next_f`, which
**   frees and reallocates it.
** - A small block of n bytes occupies class (n + 15) / 16 and is kept on
**   that class's free list when freed. When no region can be mapped, a
**   class with an empty list is served by splitting a free block of a
**   bigger class (arena_split).
** - Every byte of a region is in exactly one of: a block handed out
**   (live: `made - freed`, the bytes of the blocks ever handed out and
**   ever freed, by class size), a block on a free list, or the current
**   region's unused tail (bump .. end). So the free lists hold
**   nkeys * REGION - (end - bump) - live bytes, known without a walk.
** - Regions whose every block is free go back to the kernel (arena_trim),
**   all but one, never the current one; the rest are unmapped when the
**   arena is freed. A pass walks the free lists, so the hot path only
**   counts, and a free calls arena_check when `freed` reaches `trim_at`;
**   the check keeps the cost of the passes in proportion to the bytes
**   freed and given back.
** - Under AddressSanitizer the arena is off unless BRAID_ARENA=1: every
**   block then comes from malloc, whose quarantine and redzones catch what
**   an arena would hide. Forced on, free blocks and unused tails are
**   poisoned, so a use after free is still caught until the block is
**   reused.
*/
#define _GNU_SOURCE   /* dladdr */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "core.h"

#if defined(__SANITIZE_ADDRESS__)
#define ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ARENA_ASAN 1
#endif
#endif
#ifdef ARENA_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/lsan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
/* LeakSanitizer looks for pointers in malloc's blocks, not in mmap'd
** memory: a region is a root, or what only Lua objects in it point to (a
** process braid still tracks when os.exit leaves without closing the
** state) would be reported as leaked. */
#define ROOT_ADD(p, n) __lsan_register_root_region(p, n)
#define ROOT_DEL(p, n) __lsan_unregister_root_region(p, n)
#else
#define POISON(p, n) ((void) (p), (void) (n))
#define UNPOISON(p, n) ((void) (p), (void) (n))
#define ROOT_ADD(p, n) ((void) (p), (void) (n))
#define ROOT_DEL(p, n) ((void) (p), (void) (n))
#endif

#define REGION ((size_t) 2 << 20)      /* one huge page */
#define ARENA_SMALL 1024               /* bytes; larger blocks: malloc */
#define NCLASS (ARENA_SMALL / 16 + 1)
#define CLASS(n) (((n) + 15) >> 4)
#define TRIM_MIN ((size_t) 16 << 20)   /* free bytes worth a trim pass */
#define TRIM_KEEP 1                    /* free regions a pass keeps */
#define TRIM_STEP ((size_t) 1 << 20)   /* bytes freed between two checks */

struct braid_arena {
  void *free[NCLASS];        /* per class, LIFO, linked through the block */
  char *bump, *end;          /* the current region's unused tail */
  uintptr_t *keys;           /* region addresses, open addressing */
  size_t nkeys, cap;         /* cap: a power of two, or 0 */
  size_t made, freed;        /* bytes of blocks ever handed out, freed */
  size_t trim_at;            /* freed at which arena_check runs; 0: next */
  size_t pass_from;          /* freed at the last trim pass */
  size_t pass_gap;           /* freed after it that pays for the next one */
  size_t live_low;           /* a pass is due, too, once live falls to it */
  lua_Alloc next_f;          /* everything not small, and foreign blocks */
  void *next_ud;
  lua_State *L;              /* a state adopted from lauxlib (see below) */
  unsigned char orphan;      /* its engine is gone: no new small blocks */
};

/* ---- regions ---- */

#define REGION_OF(p) ((uintptr_t) (p) & ~(uintptr_t) (REGION - 1))

static size_t region_home (const struct braid_arena *A, uintptr_t key) {
  return (size_t) ((key >> 21) * UINT64_C(0x9E3779B97F4A7C15) >> 40) &
         (A->cap - 1);
}

static size_t region_slot (const struct braid_arena *A, uintptr_t key) {
  size_t mask = A->cap - 1, i = region_home(A, key);
  while (A->keys[i] != 0 && A->keys[i] != key) i = (i + 1) & mask;
  return i;
}

static int region_owns (const struct braid_arena *A, const void *p) {
  uintptr_t key = REGION_OF(p);
  return A->cap && A->keys[region_slot(A, key)] == key;
}

/* Records region r; 0 when the table could not grow. */
static int region_add (struct braid_arena *A, uintptr_t r) {
  if (2 * (A->nkeys + 1) > A->cap) {
    size_t cap = A->cap ? 2 * A->cap : 16, i;
    uintptr_t *old = A->keys;
    size_t ocap = A->cap;
    A->keys = (uintptr_t *) calloc(cap, sizeof *A->keys);
    if (A->keys == NULL) {
      A->keys = old;
      return 0;
    }
    A->cap = cap;
    for (i = 0; i < ocap; i++)
      if (old[i]) A->keys[region_slot(A, old[i])] = old[i];
    free(old);
  }
  A->keys[region_slot(A, r)] = r;
  A->nkeys++;
  return 1;
}

/* Forgets region r. Linear probing has no holes inside a run, so the keys
** after r's slot that could have sat there move back (backward shift). */
static void region_del (struct braid_arena *A, uintptr_t r) {
  size_t mask = A->cap - 1, i = region_slot(A, r), j = i, h;
  for (;;) {
    j = (j + 1) & mask;
    if (A->keys[j] == 0) break;
    h = region_home(A, A->keys[j]);
    /* keys[j] stays unless its home lies cyclically outside (i, j] */
    if (i <= j ? (h <= i || h > j) : (h <= i && h > j)) {
      A->keys[i] = A->keys[j];
      i = j;
    }
  }
  A->keys[i] = 0;
  A->nkeys--;
}

/* Whether regions are still advised onto huge pages, for the whole
** process. A huge page's first touch costs ~0.25 ms here (the kernel
** zeroes 2 MB), but where free 2 MB blocks are handed back to a VM's host
** (free page reporting) or must first be compacted it took ~4.6 ms, 19
** times as long, for every region from then on, while 4 KB pages cost
** ~0.4 ms per 2 MB: a fresh process's first 100k tasks ran at 900 ns each
** instead of 450 (bench/RESULTS.md, 2026-12-02). So arena_grow times the
** first touch of each huge region, and one slower than SLOW_TOUCH_NS turns
** the advice off. */
#define SLOW_TOUCH_NS 1000000
static _Atomic int huge_off;

/* A 2 MB-aligned region, advised onto huge pages unless it is the first
** (`huge` 0): a small script touches a few hundred KB of its first region,
** and a huge page would make that 2 MB of RSS. NULL when none could be
** mapped (the address space limit, say). */
static char *region_map (int huge) {
  size_t len = 2 * REGION;
  char *p = (char *) mmap(NULL, len, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char *r;
  if (p == MAP_FAILED) return NULL;
  r = (char *) (((uintptr_t) p + REGION - 1) & ~(uintptr_t) (REGION - 1));
  if (r > p) munmap(p, (size_t) (r - p));
  if (r + REGION < p + len) munmap(r + REGION, (size_t) (p + len - r - REGION));
#ifdef MADV_HUGEPAGE
  if (huge && !atomic_load_explicit(&huge_off, memory_order_relaxed)) {
    uint64_t t0;
    madvise(r, REGION, MADV_HUGEPAGE);   /* advice: may be ignored */
    t0 = uv_hrtime();
    *(volatile char *) r = 0;   /* the first touch: faults the huge page in */
    if (uv_hrtime() - t0 > SLOW_TOUCH_NS)
      atomic_store_explicit(&huge_off, 1, memory_order_relaxed);
  }
#else
  (void) huge;
#endif
  return r;
}

/* The link of a free block (its first word, poisoned under ASan). */
static void *link_get (void *b) {
  void *next;
  UNPOISON(b, sizeof(void *));
  next = *(void **) b;
  POISON(b, sizeof(void *));
  return next;
}

static void link_set (void *b, void *next) {
  UNPOISON(b, sizeof(void *));
  *(void **) b = next;
  POISON(b, sizeof(void *));
}

/* Puts the free block b of class c on its list. */
static void free_push (struct braid_arena *A, void *b, size_t c) {
  link_set(b, A->free[c]);
  A->free[c] = b;
}

/* Moves the bump pointer to a new region; what was left of the old one
** goes to the free list of its size. 0 when no region could be had. */
static int arena_grow (struct braid_arena *A) {
  char *r = region_map(A->nkeys > 0);
  size_t rest = (size_t) (A->end - A->bump);
  if (r == NULL) return 0;
  if (!region_add(A, (uintptr_t) r)) {
    munmap(r, REGION);
    return 0;
  }
  ROOT_ADD(r, REGION);
  if (rest >= 16)   /* whole classes only: every size is a multiple of 16 */
    free_push(A, A->bump, CLASS(rest));
  A->bump = r;
  A->end = r + REGION;
  POISON(r, REGION);
  return 1;
}

/* ---- blocks ---- */

static void arena_release(struct braid_arena *A);

/* No region can be had (an address-space limit, say): carve the block
** from a free one of a bigger class, the rest going to the list of its
** size. Without this, memory freed in one class could not serve another,
** and every allocation of a class with an empty list failed back to Lua,
** which runs a full emergency collection each time: a script at its limit
** took 20 s instead of 1 to fail (hardening_spec's spawn under ulimit). */
static void *arena_split (struct braid_arena *A, size_t c) {
  size_t k;
  for (k = c + 1; k < NCLASS; k++)
    if (A->free[k] != NULL) {
      char *b = (char *) A->free[k];
      A->free[k] = link_get(b);
      free_push(A, b + (c << 4), k - c);
      return b;
    }
  return NULL;
}

static void *arena_get (struct braid_arena *A, size_t n) {
  size_t c = CLASS(n);
  void *b = A->free[c];
  if (b != NULL) {
    A->free[c] = link_get(b);
    /* The next block of this class is read when it is taken: load its
    ** line now. Without this, that read (a block freed long ago) was
    ** most of the allocator's time (~8% of W2's cycles). */
    __builtin_prefetch(A->free[c]);
  } else if ((size_t) (A->end - A->bump) >= c << 4 || arena_grow(A)) {
    b = A->bump;
    A->bump += c << 4;
  } else if ((b = arena_split(A, c)) == NULL) {
    return NULL;
  }
  UNPOISON(b, n);
  A->made += c << 4;
  return b;
}

static void arena_check(struct braid_arena *A);

static inline void arena_put (struct braid_arena *A, void *b, size_t n) {
  size_t c = CLASS(n);
  POISON(b, c << 4);
  free_push(A, b, c);
  if ((A->freed += c << 4) >= A->trim_at) arena_check(A);   /* rarely */
}

/* ---- giving regions back ----
** A script that once held a million tasks would otherwise keep their
** regions (hundreds of MB) for good. Nothing on the hot path knows which
** region a list's block belongs to, so a pass finds out by walking the
** free lists: it sums each region's free bytes, unlinks the blocks of the
** regions that are wholly free and unmaps those regions, keeping TRIM_KEEP
** of them, and the current one (where the bump pointer is), as a cushion
** for the next burst. */

/* The slot of the region of b, a block of the arena. Blocks freed one
** after the other mostly share a region: the last answer (*key, *slot) is
** tried first. */
static size_t trim_slot (const struct braid_arena *A, const void *b,
                         uintptr_t *key, size_t *slot) {
  if (REGION_OF(b) != *key) {
    *key = REGION_OF(b);
    *slot = region_slot(A, *key);
  }
  return *slot;
}

/* Drops from the free lists every block whose region's slot is marked. */
static void trim_unlink (struct braid_arena *A, const uintptr_t *mark) {
  size_t c, slot = 0;
  uintptr_t key = 0;
  for (c = 1; c < NCLASS; c++) {
    void *prev = NULL, *b = A->free[c], *next;
    for (; b != NULL; b = next) {
      next = link_get(b);
      if (!mark[trim_slot(A, b, &key, &slot)]) prev = b;
      else if (prev != NULL) link_set(prev, next);
      else A->free[c] = next;
    }
  }
}

/* One pass; returns the bytes given back. Needs a scratch table from
** malloc, and without one simply gives nothing back. */
static size_t arena_trim (struct braid_arena *A) {
  uintptr_t *sum = (uintptr_t *) calloc(A->cap, sizeof *sum);
  uintptr_t cur = A->end ? (uintptr_t) (A->end - REGION) : 0;
  size_t c, i, n = 0, keep = TRIM_KEEP, got = 0, slot = 0;
  uintptr_t key = 0;
  void *b;
  if (sum == NULL) return 0;
  for (c = 1; c < NCLASS; c++)   /* free 16-byte units per region */
    for (b = A->free[c]; b != NULL; b = link_get(b))
      sum[trim_slot(A, b, &key, &slot)] += c;
  for (i = 0; i < A->cap; i++) {   /* now: 1 for the regions to let go */
    int empty = A->keys[i] != 0 && A->keys[i] != cur &&
                sum[i] == REGION >> 4;
    if (empty && keep > 0) {
      keep--;
      empty = 0;
    }
    sum[i] = (uintptr_t) empty;
    n += (size_t) empty;
  }
  if (n > 0) {
    trim_unlink(A, sum);
    for (i = 0, n = 0; i < A->cap; i++)   /* in place: n <= i */
      if (sum[i]) sum[n++] = A->keys[i];
  }
  for (i = 0; i < n; i++) {
    char *r = (char *) sum[i];
    UNPOISON(r, REGION);
    ROOT_DEL(r, REGION);
    if (munmap(r, REGION) == 0) {
      region_del(A, (uintptr_t) r);
      got += REGION;
    } else {   /* splitting a mapping past the kernel's map count: keep it */
      char *p;
      ROOT_ADD(r, REGION);
      POISON(r, REGION);
      for (p = r; p < r + REGION; p += ARENA_SMALL)
        free_push(A, p, CLASS(ARENA_SMALL));
    }
  }
  free(sum);
  return got;
}

/* Runs when `freed` reaches trim_at (while orphaned: reaches `made`, so
** the last block is gone; braid__arena_orphan). A pass costs a walk of
** the free lists, so it is made only when they hold at least TRIM_MIN
** bytes, and then when either
** - at least as many bytes have been freed since the last pass as the
**   lists held after it (pass_gap): each pass is paid for by the frees
**   before it; or
** - live bytes fell to half what they were after the last pass
**   (live_low): the tail of a burst, or the objects a script kept for a
**   while, freed after the last pass, too few bytes to pay for one.
** When a pass gave back little (every region still has a live block),
** pass_gap doubles instead, up to half the mapped bytes, so a fragmented
** heap that keeps churning is not walked again and again for nothing. In
** between, checks are O(1) and at least TRIM_STEP freed bytes apart. */
static void arena_check (struct braid_arena *A) {
  size_t live = A->made - A->freed, lists, got, gap, half, at;
  if (A->orphan) {
    if (live == 0) arena_release(A);
    return;
  }
  lists = A->nkeys * REGION - (size_t) (A->end - A->bump) - live;
  if (lists >= TRIM_MIN && (A->freed - A->pass_from >= A->pass_gap ||
                            live <= A->live_low)) {
    got = arena_trim(A);
    lists -= got;
    gap = lists > TRIM_MIN ? lists : TRIM_MIN;
    if (got < (lists + got) / 4) {   /* back off */
      half = A->nkeys * REGION / 2;
      if (2 * A->pass_gap > gap) gap = 2 * A->pass_gap;
      if (gap > half) gap = half > lists ? half : lists;
      if (gap < TRIM_MIN) gap = TRIM_MIN;
    }
    A->pass_from = A->freed;
    A->pass_gap = gap;
    A->live_low = live / 2;
  }
  /* the next check: the first moment a pass may be due */
  at = A->pass_from + A->pass_gap;
  if (live > A->live_low && A->freed + (live - A->live_low) < at)
    at = A->freed + (live - A->live_low);
  if (lists < TRIM_MIN && at < A->freed + (TRIM_MIN - lists))
    at = A->freed + (TRIM_MIN - lists);
  if (at < A->freed + TRIM_STEP) at = A->freed + TRIM_STEP;
  A->trim_at = at;
}

/* lua_Alloc over the arena (ud: the arena). */
void *braid__arena_alloc (void *ud, void *ptr, size_t osize, size_t nsize) {
  struct braid_arena *A = (struct braid_arena *) ud;
  void *q;
  if (ptr != NULL && (osize > ARENA_SMALL || !region_owns(A, ptr)))
    /* malloc's, or foreign */
    return A->next_f(A->next_ud, ptr, osize, nsize);
  if (nsize == 0) {   /* ptr is NULL or the arena's */
    if (ptr != NULL) arena_put(A, ptr, osize);
    return NULL;
  }
  if (ptr != NULL && nsize <= ARENA_SMALL && CLASS(nsize) == CLASS(osize)) {
    UNPOISON(ptr, nsize);
    return ptr;
  }
  q = NULL;
  if (nsize <= ARENA_SMALL && !A->orphan) q = arena_get(A, nsize);
  if (q == NULL) {
    q = A->next_f(A->next_ud, NULL, ptr ? 0 : osize, nsize);
    if (q == NULL) {
      /* A shrink that realloc would do in place must not fail here: the
      ** block keeps its smaller class, and the rest of it (whole classes)
      ** goes to the free list of its size. */
      if (ptr == NULL || nsize >= osize) return NULL;
      arena_put(A, (char *) ptr + (CLASS(nsize) << 4),
                (CLASS(osize) - CLASS(nsize)) << 4);
      return ptr;
    }
  }
  if (ptr != NULL) {
    memcpy(q, ptr, osize < nsize ? osize : nsize);
    arena_put(A, ptr, osize);
  }
  return q;
}

/* lauxlib's allocator (plain realloc and free), the one luaL_newstate
** gives; found once by asking a throwaway state. */
static lua_Alloc stock_alloc (void) {
  static lua_Alloc f;
  lua_Alloc g = __atomic_load_n(&f, __ATOMIC_RELAXED);
  if (g == NULL) {
    lua_State *T = luaL_newstate();
    if (T == NULL) return NULL;
    g = lua_getallocf(T, NULL);
    lua_close(T);
    __atomic_store_n(&f, g, __ATOMIC_RELAXED);
  }
  return g;
}

/* Plain malloc, for the blocks the arena does not take (ud unused). */
static void *malloc_alloc (void *ud, void *ptr, size_t osize, size_t nsize) {
  (void) ud;
  (void) osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}

/* The arena is wanted: BRAID_ARENA=0 (or off, no, false) turns it off (to
** compare, or under valgrind, which sees inside malloc only); under
** AddressSanitizer it is off unless BRAID_ARENA=1 (or on, yes, true). A
** value it does not know is warned about, once, and keeps the default. */
static int arena_wanted (void) {
  static int cache = -1;
#ifdef ARENA_ASAN
  return braid__env_flag("BRAID_ARENA", 0, &cache);
#else
  return braid__env_flag("BRAID_ARENA", 1, &cache);
#endif
}

struct braid_arena *braid__arena_new (void) {
  struct braid_arena *A;
  if (!arena_wanted()) return NULL;
  A = (struct braid_arena *) calloc(1, sizeof *A);
  if (A == NULL) return NULL;
  A->next_f = malloc_alloc;
  return A;
}

/* Unmaps every region: every block of the arena is gone with it. */
void braid__arena_free (struct braid_arena *A) {
  size_t i;
  if (A == NULL) return;
  for (i = 0; i < A->cap; i++)
    if (A->keys[i]) {
      UNPOISON((void *) A->keys[i], REGION);
      ROOT_DEL((void *) A->keys[i], REGION);
      munmap((void *) A->keys[i], REGION);
    }
  free(A->keys);
  free(A);
}

/* ---- a state braid did not create ----
** The runner's state and stock lua5.4's come from luaL_newstate, whose
** allocator is plain realloc/free. braid.run takes such a state over
** (braid__arena_adopt): blocks it allocated before stay malloc's and are
** recognised by address. The arena must then live as long as any of its
** blocks, which is longer than the engine: when the engine's box is
** collected (at lua_close, say) the arena is orphaned, makes no new
** blocks, and with its last block freed gives the state its own allocator
** back and frees itself. Lua reads the allocator anew for every call, so
** lua_close's last free (the state itself, lauxlib's) goes to lauxlib.
** A state with any other allocator (an application's, the fault test's
** counting one) is left alone.
** Stock lua5.4 unloads C modules (dlclose) at lua_close before it frees
** the objects, so braid.so pins itself (RTLD_NODELETE) when it adopts: the
** allocator's code must outlive the state's last block. */

static void arena_pin (void) {
  static int pinned;
  Dl_info info;
  if (__atomic_exchange_n(&pinned, 1, __ATOMIC_RELAXED)) return;
  if (dladdr((void *) arena_pin, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

struct braid_arena *braid__arena_adopt (lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  struct braid_arena *A;
  if (f == braid__arena_alloc) {   /* a previous engine's, orphaned */
    A = (struct braid_arena *) ud;
    A->orphan = 0;
    A->trim_at = 0;   /* arena_check sets it with the next free */
    return A;
  }
  if (!arena_wanted() || f != stock_alloc() ||
      (A = braid__arena_new()) == NULL)
    return NULL;
  arena_pin();
  A->next_f = f;
  A->next_ud = ud;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  A->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  lua_setallocf(L, braid__arena_alloc, A);
  return A;
}

static void arena_release (struct braid_arena *A) {
  lua_setallocf(A->L, A->next_f, A->next_ud);
  braid__arena_free(A);
}

/* braid_close: the state is about to be closed and the arena freed after
** it, so passes over what goes anyway would be wasted work. */
void braid__arena_closing (struct braid_arena *A) {
  if (A != NULL) A->trim_at = SIZE_MAX;
}

/* The engine of an adopted state is gone. */
void braid__arena_orphan (struct braid_arena *A) {
  if (A == NULL || A->L == NULL) return;
  A->orphan = 1;
  /* it makes no block now: `freed` reaches `made` with the last free */
  A->trim_at = A->made;
  if (A->made == A->freed) arena_release(A);
}
