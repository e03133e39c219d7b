/* ceiling-epoll: the least work an epoll server can do per tile request,
 * to measure what bounds benches/compare's tiles row on this machine.
 *
 *   ceiling-epoll PORT ROOT [THREADS]
 *
 * Serves GET /tiles/<rest> from ROOT/<rest> with no freshness checks at all:
 * each file is opened once and its descriptor and response head are kept
 * for good (common.h, shared with uring.c). Per request it
 * makes the syscalls nginx makes on an open_file_cache hit, minus the stat:
 * recv, send(head, MSG_MORE), sendfile. It is not a server to ship: no
 * timeouts, no pipelining beyond one buffer, minimal parsing, 404 otherwise.
 * One thread per core on one SO_REUSEPORT listener each, edge-triggered epoll.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUF 4096

#include "common.h"


/* Sends one response on the connection *ctx; nonzero closes it. */
static int respond(void *ctx, struct entry *e, int transient) {
  int c = *(int *)ctx;
  if (!e) return send(c, not_found, sizeof not_found - 1, MSG_NOSIGNAL) < 0;
  int failed = send(c, e->head, e->head_len, MSG_MORE | MSG_NOSIGNAL) != e->head_len;
  off_t off = 0;
  while (!failed && off < e->len) {
    ssize_t s = sendfile(c, e->fd, &off, e->len - off);
    if (s < 0 && errno == EAGAIN) { /* socket full: wait for room, simply */
      fd_set w; FD_ZERO(&w); FD_SET(c, &w); select(c + 1, NULL, &w, NULL, NULL);
    } else if (s <= 0) {
      failed = 1;
    }
  }
  if (transient) drop_transient(e);
  return failed;
}

/* Answers every complete request in buf; returns 0 to keep the connection. */
static int answer(int c, char *buf, size_t n) {
  return each_get(buf, n, respond, &c);
}

static void *worker(void *arg) {
  (void)arg;
  int l = listener(SOCK_NONBLOCK), one = 1;
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
  epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
  struct epoll_event evs[256];
  static __thread char buf[BUF + 1];
  for (;;) {
    int k = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < k; i++) {
      int fd = evs[i].data.fd;
      if (fd == l) {
        int c;
        while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct epoll_event ce = {.events = EPOLLIN | EPOLLET | EPOLLRDHUP, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
        }
        continue;
      }
      for (;;) {
        ssize_t r = recv(fd, buf, BUF, 0);
        if (r > 0) {
          if (answer(fd, buf, r)) { close(fd); break; }
          if (r < BUF) break; /* drained: edge-triggered, wait for the next edge */
          continue;
        }
        if (r < 0 && errno == EAGAIN) break;
        close(fd);
        break;
      }
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  int threads = setup(argc, argv, "ceiling-epoll");
  pthread_t t[64];
  for (int i = 0; i < threads && i < 64; i++) pthread_create(&t[i], NULL, worker, NULL);
  fprintf(stdout, "listening on http://127.0.0.1:%d\n", port);
  fflush(stdout);
  pthread_join(t[0], NULL);
  return 0;
}
