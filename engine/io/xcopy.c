/*
** xcopy.c: the value copier between threads. A worker's arguments, results
** and errors cross as a C buffer: the sender serialises values into it,
** the receiver rebuilds them in its own lua_State.
**
** What crosses: nil, booleans, numbers (integers stay integers, floats
** floats), strings and tables of those, keys included; a table reached
** twice in one message (a shared sub-table, a cycle) is rebuilt once and
** reached twice. A braid.Error comes back a braid.Error; no other
** metatable crosses (the receiver's state has no way to name it). A
** function, userdata or coroutine raises a usage error naming its path.
**
** Invariants:
** - Two walks over the same values: the first checks them, counts the
**   bytes and numbers the tables; the second writes into one buffer of
**   exactly that size. So a string's bytes are copied once into the
**   buffer (no growing buffer copies them again), and a refusal happens
**   before anything is allocated in C. Both walks are raw (lua_next,
**   lua_rawget): no Lua code runs between them, so they see the same
**   tables in the same order and number them alike.
** - The receiver copies a string once more, into its own state
**   (lua_pushlstring): a Lua string cannot borrow outside memory.
** - Depth and size are capped (kind "limit") before the buffer exists.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "core/prim.h"
#include "io/xcopy.h"
#include "io/xchan.h"

enum { X_NIL = 'n', X_FALSE = 'f', X_TRUE = 't', X_INT = 'i', X_FLT = 'd',
       X_STR = 's', X_TABLE = 'T', X_ERROR = 'E', X_REF = 'r', X_END = 'e',
       X_CHAN = 'c' };

/* A buffer ends with the shared channels it names (io/xchan.c), one
** reference each, the account its bytes are charged to (prim.h:
** braid__xcharge; NULL: none), then the channels' count:
** [values][padding][chan * n][account][uint32 n]. The values name a
** channel by its place there, so that freeing a buffer that was never
** decoded (braid__xcopy_free) releases them without a walk of the values.
** The padding (zeros, fewer than a pointer's size, never decoded) aligns
** the pointers: a leak checker sees only aligned ones, and would call the
** account or a channel of a message still in flight at exit leaked. */
#define TRAILER (sizeof(struct braid_xacct *) + sizeof(uint32_t))

struct xc {
  lua_State *L;
  int seen;                  /* table -> number, on L's stack */
  unsigned ntables;          /* numbered so far (this walk) */
  char *out;                 /* NULL: the first walk (counting) */
  size_t len;
  const struct braid_xlimits *lim;
  const char *root, *dir;
  int first;                 /* the first value's index (for the path) */
  int keys[BRAID_XCOPY_DEPTH + 2];   /* the key of each level, on L's stack */
  int arg;                   /* the top-level value being copied (1-based) */
  uint32_t nchan;            /* shared channels met so far (this walk) */
  size_t chans;              /* where their pointers go (second walk) */
};

static void xc_put (struct xc *x, const void *p, size_t n) {
  if (x->out) memcpy(x->out + x->len, p, n);
  x->len += n;
}

static void xc_tag (struct xc *x, char tag) {
  xc_put(x, &tag, 1);
}

/* Pushes the path of the value at depth d: root[arg] then each key. */
static const char *xc_path (struct xc *x, int d) {
  lua_State *L = x->L;
  luaL_Buffer b;
  int i;
  luaL_buffinit(L, &b);
  lua_pushfstring(L, "%s[%d]", x->root, x->arg);
  luaL_addvalue(&b);
  for (i = 1; i <= d; i++) {
    int k = x->keys[i];
    size_t n;
    const char *s;
    if (lua_type(L, k) == LUA_TSTRING) {
      s = lua_tolstring(L, k, &n);
      int ident = n > 0 && n < 64 && !(s[0] >= '0' && s[0] <= '9');
      size_t j;
      for (j = 0; ident && j < n; j++)
        ident = s[j] == '_' || (s[j] >= 'a' && s[j] <= 'z') ||
                (s[j] >= 'A' && s[j] <= 'Z') || (s[j] >= '0' && s[j] <= '9');
      if (ident) lua_pushfstring(L, ".%s", s);
      else lua_pushfstring(L, "[\"%s\"]", n < 40 ? s : "...");
    } else if (lua_type(L, k) == LUA_TNUMBER) {
      lua_pushvalue(L, k);   /* lua_tostring would change the key in place */
      lua_pushfstring(L, "[%s]", lua_tostring(L, -1));
      lua_remove(L, -2);
    } else {
      lua_pushfstring(L, "[%s key]", luaL_typename(L, k));
    }
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  return lua_tostring(L, -1);
}

static const char *xc_what (int type) {
  switch (type) {
    case LUA_TFUNCTION: return "a function";
    case LUA_TTHREAD: return "a coroutine";
    case LUA_TLIGHTUSERDATA: return "a light userdata";
    default: return "a userdata";
  }
}

static void xc_value (struct xc *x, int idx, int d);

/* Whether the table at idx is a braid.Error: its metatable compared raw,
** not braid_error_kind, whose lua_tostring of a number kind allocates and
** so may run a __gc finalizer, which could change a table between the two
** walks. */
static int xc_is_error (lua_State *L, int idx) {
  int is;
  if (!lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, "braid.Error");
  is = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return is;
}

static void xc_table (struct xc *x, int idx, int d) {
  lua_State *L = x->L;
  size_t at = 0;
  uint32_t count = 0;
  lua_Integer id;
  lua_pushvalue(L, idx);
  if (lua_rawget(L, x->seen) == LUA_TNUMBER) {   /* reached before */
    id = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (!x->out || id < (lua_Integer) x->ntables) {
      uint32_t r = (uint32_t) id;
      xc_tag(x, X_REF);
      xc_put(x, &r, sizeof r);
      return;
    }
    x->ntables++;   /* the second walk meets it first here, as the first */
  } else {
    lua_pop(L, 1);
    if (x->out) luaL_error(L, "xcopy: a table changed while copied");
    if (d > x->lim->max_depth) {
      braid__push_limit_error(L, (size_t) x->lim->max_depth, "max_depth",
                              "%s: tables nested deeper than %d (max_depth) "
                              "cannot cross %s", xc_path(x, d - 1),
                              x->lim->max_depth, x->dir);
      lua_error(L);
    }
    lua_pushvalue(L, idx);
    lua_pushinteger(L, (lua_Integer) x->ntables++);
    lua_rawset(L, x->seen);
  }
  luaL_checkstack(L, 6, "xcopy");
  xc_tag(x, xc_is_error(L, idx) ? X_ERROR : X_TABLE);
  at = x->len;
  xc_put(x, &count, sizeof count);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int k = lua_gettop(L) - 1;
    x->keys[d] = k;
    xc_value(x, k, d);   /* a key: its own path is the table's */
    xc_value(x, k + 1, d);
    lua_pop(L, 1);
    count++;
  }
  if (x->out) memcpy(x->out + at, &count, sizeof count);
  xc_tag(x, X_END);
}

/* Writes (or counts) the value at idx, at depth d (0: a top-level value). */
static void xc_value (struct xc *x, int idx, int d) {
  lua_State *L = x->L;
  int type = lua_type(L, idx);
  switch (type) {
    case LUA_TNIL: xc_tag(x, X_NIL); break;
    case LUA_TBOOLEAN: xc_tag(x, lua_toboolean(L, idx) ? X_TRUE : X_FALSE);
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        lua_Integer i = lua_tointeger(L, idx);
        xc_tag(x, X_INT);
        xc_put(x, &i, sizeof i);
      } else {
        lua_Number n = lua_tonumber(L, idx);
        xc_tag(x, X_FLT);
        xc_put(x, &n, sizeof n);
      }
      break;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      xc_tag(x, X_STR);
      xc_put(x, &n, sizeof n);
      xc_put(x, s, n);
      break;
    }
    case LUA_TTABLE:
      xc_table(x, lua_absindex(L, idx), d + 1);
      break;
    case LUA_TUSERDATA: {
      struct braid_xchan *ch = braid__xchan_test(L, idx);
      if (ch) {
        xc_tag(x, X_CHAN);
        xc_put(x, &x->nchan, sizeof x->nchan);
        if (x->out) {   /* the buffer holds a reference */
          braid__xchan_ref(ch);
          memcpy(x->out + x->chans + x->nchan * sizeof ch, &ch, sizeof ch);
        }
        x->nchan++;
        break;
      }
    }
    /* fall through */
    default:
      braid_error(L, "usage", NULL, "%s: %s cannot cross %s", xc_path(x, d),
                  xc_what(type), x->dir);
  }
  if (!x->out && x->len > x->lim->max_bytes) {
    braid__push_limit_error(L, x->lim->max_bytes, "max_message",
                            "%s: a message over %I bytes (max_message) "
                            "cannot cross %s", xc_path(x, d),
                            (lua_Integer) x->lim->max_bytes, x->dir);
    lua_error(L);
  }
}

static void xc_walk (struct xc *x, int n) {
  uint32_t count = (uint32_t) n;
  int i;
  x->len = 0;
  x->ntables = 0;
  x->nchan = 0;
  xc_put(x, &count, sizeof count);
  for (i = 0; i < n; i++) {
    x->arg = i + 1;
    xc_value(x, x->first + i, 0);
  }
}

char *braid__xcopy_encode (lua_State *L, int first, int n, const char *root,
                           const char *dir, const struct braid_xlimits *lim,
                           const char *fname, size_t *len) {
  struct xc x;
  size_t total;
  braid_engine_t *E = braid_engine(L);
  struct braid_xacct *acct = NULL;
  struct braid_xlimits caps = {BRAID_XCOPY_DEPTH, BRAID_XCOPY_BYTES};
  if (lim) caps = *lim;
  if (caps.max_depth > BRAID_XCOPY_DEPTH) caps.max_depth = BRAID_XCOPY_DEPTH;
  memset(&x, 0, sizeof x);
  x.L = L;
  x.lim = &caps;
  x.root = root;
  x.dir = dir;
  x.first = lua_absindex(L, first);
  luaL_checkstack(L, 8, "xcopy");
  lua_newtable(L);
  x.seen = lua_gettop(L);
  xc_walk(&x, n);                       /* checks, counts, numbers */
  x.chans = (x.len + sizeof(void *) - 1) & ~(sizeof(void *) - 1);
  total = x.chans + x.nchan * sizeof(struct braid_xchan *) + TRAILER;
  /* the sender's until it is freed, on whichever thread takes it */
  if (E && braid__xcharge(E, total, &acct) != 0)
    braid_error(L, "memory", NULL, "%s: not enough memory for a message of "
                "%I bytes %s (%s: a message counts in its sender's memory "
                "limit until it is taken)", fname, (lua_Integer) total, dir,
                root);
  x.out = (char *) braid__malloc(total);
  if (x.out == NULL) {
    braid__xcharge_back(acct, total);
    braid_error(L, "memory", NULL, "%s: not enough memory to copy a message "
                "of %I bytes %s (%s)", fname, (lua_Integer) total, dir, root);
  }
  xc_walk(&x, n);                       /* writes: cannot fail */
  memset(x.out + x.len, 0, x.chans - x.len);
  memcpy(x.out + total - TRAILER, &acct, sizeof acct);
  memcpy(x.out + total - sizeof x.nchan, &x.nchan, sizeof x.nchan);
  lua_pop(L, 1);
  *len = total;
  return x.out;
}

/* ---- rebuilding ---- */

struct xd {
  lua_State *L;
  const char *p, *end;
  const char *chans;         /* the channels' pointers */
  uint32_t nchan;
  int tables;                /* number -> table, on L's stack */
  lua_Integer ntables;
};

static void xd_get (struct xd *x, void *dst, size_t n) {
  if ((size_t) (x->end - x->p) < n) luaL_error(x->L, "xcopy: short buffer");
  memcpy(dst, x->p, n);
  x->p += n;
}

static void xd_value (struct xd *x) {
  lua_State *L = x->L;
  char tag;
  xd_get(x, &tag, 1);
  switch (tag) {
    case X_NIL: lua_pushnil(L); break;
    case X_FALSE: lua_pushboolean(L, 0); break;
    case X_TRUE: lua_pushboolean(L, 1); break;
    case X_INT: { lua_Integer i; xd_get(x, &i, sizeof i);
                  lua_pushinteger(L, i); break; }
    case X_FLT: { lua_Number n; xd_get(x, &n, sizeof n);
                  lua_pushnumber(L, n); break; }
    case X_STR: {
      size_t n;
      xd_get(x, &n, sizeof n);
      if ((size_t) (x->end - x->p) < n) luaL_error(L, "xcopy: short buffer");
      lua_pushlstring(L, x->p, n);
      x->p += n;
      break;
    }
    case X_REF: {
      uint32_t r;
      xd_get(x, &r, sizeof r);
      lua_rawgeti(L, x->tables, (lua_Integer) r + 1);
      break;
    }
    case X_CHAN: {
      uint32_t i;
      struct braid_xchan *ch;
      xd_get(x, &i, sizeof i);
      if (i >= x->nchan) luaL_error(L, "xcopy: bad buffer");
      memcpy(&ch, x->chans + i * sizeof ch, sizeof ch);
      braid__xchan_push(L, ch);   /* a reference of its own */
      break;
    }
    case X_TABLE: case X_ERROR: {
      uint32_t count, i;
      xd_get(x, &count, sizeof count);
      luaL_checkstack(L, 4, "xcopy");
      lua_createtable(L, 0, count > 1024 ? 1024 : (int) count);
      lua_pushvalue(L, -1);
      lua_rawseti(L, x->tables, ++x->ntables);
      for (i = 0; i < count; i++) {
        xd_value(x);
        xd_value(x);
        lua_rawset(L, -3);
      }
      if (tag == X_ERROR) luaL_setmetatable(L, "braid.Error");
      xd_get(x, &tag, 1);   /* X_END */
      break;
    }
    default: luaL_error(L, "xcopy: bad buffer");
  }
}

int braid__xcopy_decode (lua_State *L, const char *buf, size_t len) {
  struct xd x;
  uint32_t n, i;
  x.L = L;
  x.p = buf;
  if (len < TRAILER) luaL_error(L, "xcopy: short buffer");
  memcpy(&x.nchan, buf + len - sizeof n, sizeof n);
  if ((len - TRAILER) / sizeof(struct braid_xchan *) < x.nchan)
    luaL_error(L, "xcopy: bad buffer");
  x.chans = buf + len - TRAILER - x.nchan * sizeof(struct braid_xchan *);
  x.end = x.chans;
  x.ntables = 0;
  lua_newtable(L);
  x.tables = lua_gettop(L);
  xd_get(&x, &n, sizeof n);
  luaL_checkstack(L, (int) n + 4, "xcopy: too many values");
  for (i = 0; i < n; i++) xd_value(&x);
  lua_remove(L, x.tables);
  return (int) n;
}

int braid__xcopy_decode_fail (lua_State *L, int rc, const char *fname,
                              size_t len) {
  if (rc != LUA_ERRMEM) return lua_error(L);
  lua_pop(L, 1);
  return braid_error(L, "memory", NULL, "%s: not enough memory for a message "
                     "of %I bytes (its copy counts in the receiver's memory "
                     "limit)", fname, (lua_Integer) len);
}

void braid__xcopy_free (char *buf, size_t len) {
  uint32_t n, i;
  struct braid_xacct *acct;
  if (buf == NULL) return;
  memcpy(&n, buf + len - sizeof n, sizeof n);
  memcpy(&acct, buf + len - TRAILER, sizeof acct);
  for (i = 0; i < n; i++) {
    struct braid_xchan *ch;
    memcpy(&ch, buf + len - TRAILER - (n - i) * sizeof ch, sizeof ch);
    braid__xchan_release(ch);
  }
  free(buf);
  braid__xcharge_back(acct, len);
}

/* The copy is charged to no one: it is made on the receiving side (a
** worker's load error, copied for each call), not by a sender. */
char *braid__xcopy_dup (const char *buf, size_t len) {
  char *d = (char *) braid__malloc(len);
  struct braid_xacct *none = NULL;
  uint32_t n, i;
  if (d == NULL) return NULL;
  memcpy(d, buf, len);
  memcpy(d + len - TRAILER, &none, sizeof none);
  memcpy(&n, buf + len - sizeof n, sizeof n);
  for (i = 0; i < n; i++) {
    struct braid_xchan *ch;
    memcpy(&ch, buf + len - TRAILER - (n - i) * sizeof ch, sizeof ch);
    braid__xchan_ref(ch);
  }
  return d;
}
