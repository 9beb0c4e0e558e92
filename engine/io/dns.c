/*
** dns.c: braid.dns.resolve, name resolution on braid's resolver threads
** (gai.c).
**
** A lookup suspends its task with braid_suspendk, as an embedder's C
** function would. Invariants: the outcome is kept in a malloc'd struct
** dns_op, never in the op's data. Until the op ends the dns_op is the
** op's: the continuation frees it, or dns_cancel when the op ends without
** one (an abandoned task). Cancelling a lookup in flight abandons it
** (braid__gai_abandon: its callback never runs, and nothing waits for the
** thread) and frees the dns_op at once. The callback never touches Lua;
** the continuation builds the addresses under lua_pcall, so the dns_op is
** freed even if that raises.
*/
#include <stdlib.h>
#include <string.h>
#include "core/prim.h"
#include "io/gai.h"

struct dns_op {
  braid_op_t *op;            /* the call waiting for it */
  struct braid_gai *req;     /* the lookup, while in flight */
  int busy;                  /* the lookup is in flight */
  int status;
  struct addrinfo *res;
};

/* The op's data: inline in the task, so suspending allocates nothing. */
struct dns_call {
  struct dns_op *d;          /* NULL when the lookup could not start */
  int err;                   /* why it could not start */
};

static void dns_op_free (struct dns_op *d) {
  if (d->res) uv_freeaddrinfo(d->res);
  free(d);
}

static void dns_cb (struct braid_gai *req, int status, struct addrinfo *res) {
  struct dns_op *d = (struct dns_op *) braid__gai_data(req);
  d->busy = 0;
  d->req = NULL;
  d->status = status;
  d->res = res;
  braid_resume(d->op, 0);
}

/* What a lookup asks for: start's argument, on the C stack. */
struct dns_args {
  uv_loop_t *loop;
  const char *host;
};

/* Starts the lookup. When it cannot start, the op is resumed at once with
** the code, so that the continuation raises the usual error (with the
** host). */
static int dns_start (braid_op_t *op, void *ud) {
  const struct dns_args *a = (const struct dns_args *) ud;
  struct dns_call *c = (struct dns_call *) braid_op_data(op);
  struct dns_op *d = (struct dns_op *) braid__calloc(1, sizeof *d);
  struct addrinfo hints;
  int rc = UV_ENOMEM;
  braid_op_label(op, "dns %s", a->host);
  if (d != NULL) {
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;   /* one entry per address, not type */
    d->op = op;
    rc = braid__gai_start(a->loop, &d->req, a->host, NULL, &hints, dns_cb,
                          d);
    if (rc == 0) {
      d->busy = 1;
      c->d = d;
      return 0;
    }
    free(d);
  }
  c->err = rc;
  braid_resume(op, 0);
  return 0;
}

/* Ends the op without the continuation: a lookup in flight is abandoned
** (its thread frees what it finds); the dns_op is freed either way. */
static void dns_cancel (braid_op_t *op) {
  struct dns_op *d = ((struct dns_call *) braid_op_data(op))->d;
  if (d == NULL) return;
  if (d->busy) braid__gai_abandon(d->req);
  dns_op_free(d);
}

/* Pushes the addresses as a list of strings, duplicates dropped, in the
** resolver's order. [-0, +1, m] */
static void dns_push_addresses (lua_State *L, struct addrinfo *res) {
  struct addrinfo *ai;
  char name[64];
  lua_Integer n = 0;
  lua_newtable(L);   /* seen */
  lua_newtable(L);   /* the list */
  for (ai = res; ai; ai = ai->ai_next) {
    int rc;
    if (ai->ai_family == AF_INET)
      rc = uv_ip4_name((struct sockaddr_in *) ai->ai_addr, name, sizeof name);
    else if (ai->ai_family == AF_INET6)
      rc = uv_ip6_name((struct sockaddr_in6 *) ai->ai_addr, name, sizeof name);
    else
      continue;
    if (rc != 0) continue;
    if (lua_getfield(L, -2, name) != LUA_TNIL) {
      lua_pop(L, 1);
      continue;
    }
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
    lua_setfield(L, -3, name);
    lua_pushstring(L, name);
    lua_rawseti(L, -2, ++n);
  }
  lua_remove(L, -2);
}

/* Raises kind "io" with the code, or kind "memory" when memory ran out
** (braid's, libuv's or the resolver's), with the host (at 1) in `host`. */
static int dns_raise (lua_State *L, int rc) {
  if (rc == UV_ENOMEM || rc == UV_EAI_MEMORY)
    braid_pusherror(L, "memory", NULL, "braid.dns.resolve: not enough "
                    "memory");
  else
    braid_pusherror(L, "io", braid__errname(rc), "braid.dns.resolve %s: %s",
                    lua_tostring(L, 1), braid__strerror(rc));
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "host");
  return lua_error(L);
}

/* [addrinfo list] -> the addresses (under lua_pcall). */
static int l_dns_result (lua_State *L) {
  dns_push_addresses(L, (struct addrinfo *) lua_touserdata(L, 1));
  return 1;
}

/* The continuation, in the task: the host is at 1. */
static int dns_k (lua_State *L, braid_op_t *op) {
  struct dns_call *c = (struct dns_call *) braid_op_data(op);
  struct dns_op *d = c->d;
  int rc = d ? d->status : c->err;
  if (rc < 0) {
    if (d) dns_op_free(d);
    return dns_raise(L, rc);
  }
  lua_pushcfunction(L, l_dns_result);
  lua_pushlightuserdata(L, d->res);
  rc = lua_pcall(L, 1, 1, 0);
  dns_op_free(d);
  return rc == LUA_OK ? 1 : lua_error(L);
}

/* braid.dns.resolve(host) -> {addresses}: IPv4 and IPv6 addresses as
** strings, deduplicated, in the resolver's order. Raises kind "io" with
** `code` (e.g. "EAI_NONAME") and `host` when the lookup fails. */
static int l_dns_resolve (lua_State *L) {
  struct dns_args a;
  size_t len;
  a.loop = braid_loop(braid_check_task(L, "braid.dns.resolve"));  /* first */
  braid__check_type(L, 1, LUA_TSTRING, "braid.dns.resolve");
  a.host = lua_tolstring(L, 1, &len);
  if (strlen(a.host) != len || len == 0)
    braid_argerror(L, 1, "braid.dns.resolve", "host name expected");
  braid_check_suspend(L, "braid.dns.resolve");
  lua_settop(L, 1);
  return braid_suspendk(L, "dns.resolve", sizeof(struct dns_call), dns_start,
                        dns_cancel, &a, dns_k);
}

/* Sets braid.dns on the braid table at the stack top. [-0, +0, m] */
void braid__open_dns (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"resolve", l_dns_resolve},
    {NULL, NULL}
  };
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "dns");
}
