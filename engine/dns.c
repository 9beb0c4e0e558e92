/*
** dns.c: braid.dns.resolve, name resolution on uv_getaddrinfo.
**
** Invariants, as in fs.c: a lookup is a malloc'd struct dns_op owned either
** by a box (a userdata on the task's stack, whose __gc frees the op if the
** continuation never runs) or, once cancellation has detached it, by its
** callback, which libuv calls exactly once (with UV_EAI_CANCELED when
** uv_cancel won) and which then frees the op and the addrinfo list. The
** callback never touches Lua.
*/
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define DNSOP_MT "braid.DnsOp"

struct dns_op {
  struct braid_wait wait;
  struct dns_op **box;       /* the Lua-side owner; NULL once detached */
  uv_getaddrinfo_t req;
  int busy;                  /* the lookup is in flight */
  int status;
  struct addrinfo *res;
};

static void dns_op_free (struct dns_op *op) {
  if (op->res) uv_freeaddrinfo(op->res);
  free(op);
}

static void dns_cb (uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  struct dns_op *op = container_of(req, struct dns_op, req);
  op->busy = 0;
  op->status = status;
  op->res = res;
  if (op->box == NULL) dns_op_free(op);
  else braid__task_wake(op->wait.task, WAKE_OK);
}

/* Detaches the op: uv_cancel is tried, and dns_cb frees it either way. */
static void dns_detach (struct dns_op *op) {
  *op->box = NULL;
  op->box = NULL;
  if (op->busy) uv_cancel((uv_req_t *) &op->req);
  else dns_op_free(op);
}

static void dns_cancel (struct braid_wait *w) {
  dns_detach(container_of(w, struct dns_op, wait));
}

static int l_dns_gc (lua_State *L) {
  struct dns_op **box = (struct dns_op **) lua_touserdata(L, 1);
  if (*box) dns_detach(*box);
  return 0;
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

/* Raises kind "io" with the code and the host (at 1) in `host`. */
static int dns_raise (lua_State *L, int rc) {
  braid__error_push(L, "io", uv_err_name(rc), "braid.dns.resolve %s: %s",
                    lua_tostring(L, 1), uv_strerror(rc));
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "host");
  return lua_error(L);
}

/* The continuation: the host is at 1, the box is ctx. */
static int dns_k (lua_State *L, int status, lua_KContext ctx) {
  struct dns_op **box = (struct dns_op **) ctx;
  struct dns_op *op = *box;
  struct braid_task *t = braid__engine(L)->current;
  (void) status;
  braid__task_resumed(L, t);   /* cancelled or refused: op detached */
  if (op->status < 0) {
    int rc = op->status;
    *box = NULL;
    dns_op_free(op);
    return dns_raise(L, rc);
  }
  dns_push_addresses(L, op->res);
  *box = NULL;
  dns_op_free(op);
  return 1;
}

/* braid.dns.resolve(host) -> {addresses}: IPv4 and IPv6 addresses as
** strings, deduplicated, in the resolver's order. Raises kind "io" with
** `code` (e.g. "EAI_NONAME") and `host` when the lookup fails. */
static int l_dns_resolve (lua_State *L) {
  struct braid_task *t = braid__task_current(L, "dns.resolve");
  struct dns_op **box, *op;
  struct addrinfo hints;
  size_t len;
  const char *host;
  int rc;
  if (lua_type(L, 1) != LUA_TSTRING)
    braid__error_argerror(L, 1, "dns.resolve", "string expected");
  host = lua_tolstring(L, 1, &len);
  if (strlen(host) != len || len == 0)
    braid__error_argerror(L, 1, "dns.resolve", "host name expected");
  braid__task_checkyield(L, t, "dns.resolve");
  braid__task_checkcancel(L, t);
  lua_settop(L, 1);
  box = (struct dns_op **) lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, DNSOP_MT);
  op = calloc(1, sizeof *op);
  if (op == NULL) return luaL_error(L, "not enough memory");
  op->box = box;
  *box = op;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;   /* one entry per address, not per type */
  rc = uv_getaddrinfo(t->E->loop, &op->req, dns_cb, host, NULL, &hints);
  if (rc < 0) return dns_raise(L, rc);   /* the box's __gc frees op */
  op->busy = 1;
  braid__task_wait(t, &op->wait, dns_cancel, "dns.resolve");
  return braid__task_yield(L, t, (lua_KContext) box, dns_k);
}

/* Sets braid.dns on the braid table at the stack top. [-0, +0, m] */
void braid__open_dns (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"resolve", l_dns_resolve},
    {NULL, NULL}
  };
  if (luaL_newmetatable(L, DNSOP_MT)) {
    lua_pushcfunction(L, l_dns_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "dns");
}
