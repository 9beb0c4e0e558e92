/*
** http_response.c: the response object of braid.http.request and
** braid.http.open (braid.HttpResponse): its fields (status, headers, body,
** url, http_version, time), res:header_list, and, for a response opened
** with braid.http.open, reading the body as it arrives (res:read) and
** closing it. lua/braid.lua adds res:lines, res:json and res:read("a").
**
** Invariants:
** - The object is a userdata (struct http_res) holding its transfer (NULL
**   once the body has been read, the response closed, or for request's
**   complete response), the status, time and HTTP version; its user values
**   are the body (1), the raw header block (2) until res.headers or
**   res:header_list parses it into the headers table (3) and the lists of
**   each header's values (2 then), the URL (4), and the request body (5)
**   while libcurl may send from it (http_options.c: no copy of it is
**   made). No table is made for a response whose script reads only status
**   and body (W7: one per request). The transfer points back at the slot
**   (x->owner), which whoever frees the transfer clears.
** - An open stream is a resource of the scope that opened it: the scope's
**   end, res:close, <close> and __gc all free the transfer at once (its
**   connection closes), and a task waiting in res:read then gets kind
**   "closed".
** - One task reads at a time; a read waits with braid_suspendk and its
**   cancel hook only forgets the op: the stream stays open.
*/
#include <ctype.h>
#include <string.h>
#include "io/http.h"

#define RES_MT "braid.HttpResponse"
#define HTTP_LOW ((size_t) 64 << 10)   /* reading below it un-pauses */

/* The userdata; x first: http.h's callers hold it as struct http_xfer **. */
struct http_res {
  struct http_xfer *x;
  lua_Integer status;
  double time;
  const char *version;       /* "1.1"..., or NULL when unknown */
  unsigned char filled;      /* the fields are set */
};

enum { UV_BODY = 1, UV_HDR, UV_HEADERS, UV_URL, UV_SENT, UV_N = UV_SENT };

struct http_xfer **braid__http_newres (lua_State *L) {
  struct http_res *r = lua_newuserdatauv(L, sizeof *r, UV_N);
  memset(r, 0, sizeof *r);
  luaL_setmetatable(L, RES_MT);
  return &r->x;
}

void braid__http_keep_body (lua_State *L, int idx) {
  lua_setiuservalue(L, idx, UV_SENT);
}

/* The transfer is freed: libcurl sends nothing more from the request
** body, which the response need not keep (a script may keep the response
** long after). */
static void res_drop_body (lua_State *L, int idx) {
  lua_pushnil(L);
  lua_setiuservalue(L, idx, UV_SENT);
}

/* Pushes the headers table from the header block hdr (len bytes) and
** fills the lists (at -1). [-0, +1, m] */
static void res_parse_headers (lua_State *L, const char *hdr, size_t len) {
  const char *p = hdr, *end = p + len;
  lua_newtable(L);
  while (p && p < end) {
    const char *eol = memchr(p, '\n', (size_t) (end - p)), *colon, *v, *ve;
    char name[256];
    size_t i, n;
    if (eol == NULL) eol = end;
    colon = memchr(p, ':', (size_t) (eol - p));
    if (colon && (n = (size_t) (colon - p)) > 0 && n < sizeof name &&
        strncmp(p, "HTTP/", 5) != 0) {
      for (i = 0; i < n; i++) name[i] = (char) tolower((unsigned char) p[i]);
      for (v = colon + 1; v < eol && (*v == ' ' || *v == '\t'); v++) {}
      for (ve = eol; ve > v && isspace((unsigned char) ve[-1]); ve--) {}
      lua_pushlstring(L, name, n);                     /* name */
      lua_pushvalue(L, -1);
      if (lua_rawget(L, -3) == LUA_TNIL) {             /* joined value */
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t) (ve - v));
      } else {
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t) (ve - v));
        lua_concat(L, 3);
      }
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);                               /* headers */
      lua_pushvalue(L, -1);
      if (lua_rawget(L, -4) == LUA_TNIL) {             /* lists */
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, -6);
      }
      lua_pushlstring(L, v, (size_t) (ve - v));
      lua_rawseti(L, -2, (lua_Integer) lua_rawlen(L, -2) + 1);
      lua_pop(L, 2);
    }
    p = eol + 1;
  }
}

/* The headers are parsed on first use (res.headers, res:header_list): a
** script that reads only status and body makes no table for them. User
** value 2 holds the raw block until then, the lists afterwards. */
static void res_headers (lua_State *L, int idx) {
  size_t len;
  const char *hdr;
  if (lua_getiuservalue(L, idx, UV_HDR) != LUA_TSTRING) {
    lua_pop(L, 1);
    return;
  }
  hdr = lua_tolstring(L, -1, &len);
  lua_newtable(L);                   /* lists */
  res_parse_headers(L, hdr, len);    /* headers */
  lua_setiuservalue(L, idx, UV_HEADERS);
  lua_setiuservalue(L, idx, UV_HDR);
  lua_pop(L, 1);
}

/* Fills the fields of the response at idx from its transfer x. */
static void res_set_fields (lua_State *L, int idx, struct http_xfer *x,
                            int body) {
  static const struct { long v; const char *name; } versions[] = {
    {CURL_HTTP_VERSION_1_0, "1.0"}, {CURL_HTTP_VERSION_1_1, "1.1"},
    {CURL_HTTP_VERSION_2_0, "2"}, {CURL_HTTP_VERSION_3, "3"}
  };
  struct http_res *r = (struct http_res *) lua_touserdata(L, idx);
  long status = 0, version = 0;
  char *url = NULL;
  curl_off_t us = 0;
  size_t i;
  idx = lua_absindex(L, idx);
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &version);
  curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url);
  curl_easy_getinfo(x->easy, body ? CURLINFO_TOTAL_TIME_T :
                    CURLINFO_STARTTRANSFER_TIME_T, &us);
  lua_pushlstring(L, x->hdr.p ? x->hdr.p : "", x->hdr.len);
  lua_setiuservalue(L, idx, UV_HDR);
  lua_pushstring(L, url ? url : x->url);
  lua_setiuservalue(L, idx, UV_URL);
  if (body && !x->to_file) {
    lua_pushlstring(L, x->body.p ? x->body.p : "", x->body.len);
    lua_setiuservalue(L, idx, UV_BODY);
  }
  r->status = status;
  r->time = (double) us / 1e6;
  for (i = 0; i < sizeof versions / sizeof *versions; i++)
    if (versions[i].v == version) r->version = versions[i].name;
  r->filled = 1;
}

void braid__http_finish (lua_State *L, int idx, const char *fname) {
  struct http_xfer *x = *(struct http_xfer **) lua_touserdata(L, idx);
  (void) fname;
  res_set_fields(L, idx, x, 1);   /* may raise: the object still owns x */
  braid__http_xfer_free(x);
  res_drop_body(L, idx);
}

static void res_closed (braid_resource_t *r) {
  struct http_xfer *x = container_of(r, struct http_xfer, res);
  x->attached = 0;   /* the scope has unlinked it */
  braid__http_xfer_free(x);
}

void braid__http_start_stream (lua_State *L, int idx) {
  struct http_xfer *x = *(struct http_xfer **) lua_touserdata(L, idx);
  res_set_fields(L, idx, x, 0);
  x->res.close = res_closed;
  braid_resource_add(L, &x->res);
  x->attached = 1;
}

void braid__http_check (lua_State *L, int idx, const char *fname) {
  struct http_res *r = (struct http_res *) lua_touserdata(L, idx);
  char cut[HTTP_URL_SHOWN + 4];
  if (r->status < 400) return;
  lua_getiuservalue(L, idx, UV_URL);
  braid_pusherror(L, "http", NULL, "%s %s: status %d", fname,
                  braid__http_url_shown(lua_tostring(L, -1), cut),
                  (int) r->status);
  lua_pushinteger(L, r->status);
  lua_setfield(L, -2, "status");
  lua_insert(L, -2);
  lua_setfield(L, -2, "url");
  lua_getiuservalue(L, idx, UV_BODY);
  lua_setfield(L, -2, "body");
  lua_pushvalue(L, idx);
  lua_setfield(L, -2, "response");
  lua_error(L);
}

static struct http_xfer **res_check (lua_State *L, const char *fname) {
  return (struct http_xfer **) braid__check_object(L, 1, RES_MT, fname);
}

/* Fields first (from the object), then methods (the upvalue). */
static int l_res_index (lua_State *L) {
  struct http_res *r = (struct http_res *) lua_touserdata(L, 1);
  size_t n;
  const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &n)
                                                 : NULL;
  if (k && r->filled) {
    switch (n) {
    case 3:
      if (memcmp(k, "url", 3) == 0) return lua_getiuservalue(L, 1, UV_URL), 1;
      break;
    case 4:
      if (memcmp(k, "body", 4) == 0)
        return lua_getiuservalue(L, 1, UV_BODY), 1;
      if (memcmp(k, "time", 4) == 0) return lua_pushnumber(L, r->time), 1;
      break;
    case 6:
      if (memcmp(k, "status", 6) == 0)
        return lua_pushinteger(L, r->status), 1;
      break;
    case 7:
      if (memcmp(k, "headers", 7) == 0) {
        res_headers(L, 1);
        return lua_getiuservalue(L, 1, UV_HEADERS), 1;
      }
      break;
    case 12:
      if (memcmp(k, "http_version", 12) == 0) {
        if (r->version) lua_pushstring(L, r->version);
        else lua_pushnil(L);
        return 1;
      }
      break;
    }
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

/* res:header_list(name) -> {values}: every value of a header, in the
** order received (name in any case); {} when absent. */
static int l_res_header_list (lua_State *L) {
  size_t n, i;
  const char *name;
  char low[256];
  res_check(L, "res:header_list");
  braid__check_type(L, 2, LUA_TSTRING, "res:header_list");
  name = lua_tolstring(L, 2, &n);
  res_headers(L, 1);
  if (lua_getiuservalue(L, 1, UV_HDR) == LUA_TTABLE && n < sizeof low) {
    for (i = 0; i < n; i++) low[i] = (char) tolower((unsigned char) name[i]);
    if (lua_getfield(L, -1, (low[n] = '\0', low)) == LUA_TTABLE) {
      lua_Integer k, len = (lua_Integer) lua_rawlen(L, -1);
      lua_createtable(L, (int) len, 0);
      for (k = 1; k <= len; k++) {   /* a copy: the script may change it */
        lua_rawgeti(L, -2, k);
        lua_rawseti(L, -2, k);
      }
      return 1;
    }
  }
  lua_newtable(L);
  return 1;
}

static int read_start (braid_op_t *op, void *ud) {
  struct http_xfer *x = (struct http_xfer *) ud;
  *(struct http_xfer **) braid_op_data(op) = x;
  braid_op_label(op, "http read %s", x->url);
  x->op = op;
  return 0;
}

static void read_cancel (braid_op_t *op) {
  struct http_xfer *x = *(struct http_xfer **) braid_op_data(op);
  x->op = NULL;   /* the stream stays open */
}

static int res_read (lua_State *L);

static int read_k (lua_State *L, braid_op_t *op) {
  (void) op;
  return res_read(L);
}

/* Stack: the response (1), the byte count or nil (2). */
static int res_read (lua_State *L) {
  struct http_xfer **ud = (struct http_xfer **) lua_touserdata(L, 1);
  struct http_xfer *x = *ud;
  size_t avail, max = (size_t) luaL_optinteger(L, 2, 0);
  if (x == NULL) {   /* read to the end already, or closed */
    lua_pushnil(L);
    return 1;
  }
  avail = x->body.len - x->body.off;
  if (avail > 0) {
    if (max > 0 && max < avail) avail = max;
    lua_pushlstring(L, x->body.p + x->body.off, avail);
    x->body.off += avail;
    if (x->body.len - x->body.off < HTTP_LOW) braid__http_unpause(x);
    return 1;
  }
  if (x->finished) {
    if (braid__http_failed(x)) {
      braid__http_push_error(L, x, "res:read");
      braid__http_xfer_free(x);
      res_drop_body(L, 1);
      return lua_error(L);
    }
    braid__http_xfer_free(x);   /* the connection goes back to the cache */
    res_drop_body(L, 1);
    lua_pushnil(L);
    return 1;
  }
  braid__http_unpause(x);
  return braid_suspendk(L, "http.read", sizeof x, read_start, read_cancel, x,
                        read_k);
}

/* res:read([n]) -> string | nil: what has arrived of the body (at most n
** bytes), waiting for at least one; nil at its end. For a response from
** braid.http.open; on request's, nil. */
static int l_res_read (lua_State *L) {
  struct http_xfer **ud = res_check(L, "res:read");
  lua_settop(L, 2);
  if (!lua_isnil(L, 2) &&
      (!lua_isinteger(L, 2) || lua_tointeger(L, 2) <= 0))
    braid_argerror(L, 2, "res:read", "positive integer expected");
  braid_check_task(L, "res:read");
  if (*ud && (*ud)->op)
    return braid_usageerror(L, "res:read: another task is reading this "
                            "response");
  if (*ud && (*ud)->body.len == (*ud)->body.off && !(*ud)->finished)
    braid_check_suspend(L, "res:read");
  return res_read(L);
}

/* res:close(): stops the transfer at once (its connection closes unless
** the body had been read to the end); never waits, so it suits <close>. */
static int l_res_close (lua_State *L) {
  struct http_xfer **ud = res_check(L, "res:close");
  if (*ud) braid__http_xfer_free(*ud);
  res_drop_body(L, 1);
  return 0;
}

static int l_res_gc (lua_State *L) {
  struct http_xfer **ud = (struct http_xfer **) lua_touserdata(L, 1);
  if (*ud) braid__http_xfer_free(*ud);
  return 0;
}

static int l_res_tostring (lua_State *L) {
  struct http_res *r = (struct http_res *) lua_touserdata(L, 1);
  lua_getiuservalue(L, 1, UV_URL);
  lua_pushfstring(L, "<http response %d %s>", (int) r->status,
                  lua_tostring(L, -1));
  return 1;
}

void braid__http_open_response (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"header_list", l_res_header_list},
    {"read", l_res_read},
    {"close", l_res_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", l_res_gc},
    {"__close", l_res_close},
    {"__tostring", l_res_tostring},
    {NULL, NULL}
  };
  braid__class(L, RES_MT, meta, methods, l_res_index);
  lua_setfield(L, -2, "Response");
}
