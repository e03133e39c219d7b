/* ceiling-epoll: the least work an epoll server can do per tile request,
 * to measure what bounds benches/compare's tiles row on this machine.
 *
 *   ceiling-epoll PORT ROOT [THREADS]
 *
 * Serves GET /tiles/<rest> from ROOT/<rest> with no freshness checks at all:
 * each file is opened once and its descriptor and response head are kept
 * for good (up to MAX_OPEN; beyond that, open, serve, close). Per request it
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

#define MAX_OPEN 16000
#define SLOTS (1 << 16)
#define BUF 4096

struct entry {
  char *path;        /* request path, the key */
  int fd;            /* -1: not cached */
  off_t len;
  char head[192];
  int head_len;
};

static struct entry table[SLOTS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static int open_count;
static const char *root;
static int port;

static uint64_t hash(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

static int make_head(char *out, size_t cap, off_t len) {
  return snprintf(out, cap,
                  "HTTP/1.1 200 OK\r\nServer: ceiling\r\nContent-Type: image/png\r\n"
                  "Content-Length: %lld\r\nCache-Control: public, max-age=60\r\n\r\n",
                  (long long)len);
}

/* Finds or opens the entry for path; returns NULL if there is no such file.
 * *transient is set when the descriptor must be closed after the response. */
static struct entry *lookup(const char *path, size_t n, struct entry *tmp, int *transient) {
  uint64_t h = hash(path, n);
  *transient = 0;
  for (uint64_t i = 0; i < SLOTS; i++) {
    struct entry *e = &table[(h + i) & (SLOTS - 1)];
    char *p = __atomic_load_n(&e->path, __ATOMIC_ACQUIRE);
    if (p == NULL) break;
    if (strlen(p) == n && memcmp(p, path, n) == 0) return e;
  }
  char file[1024];
  if (n < 7 || memcmp(path, "/tiles/", 7) != 0 || n - 7 + strlen(root) + 2 > sizeof file) return NULL;
  snprintf(file, sizeof file, "%s/%.*s", root, (int)(n - 7), path + 7);
  if (strstr(file, "..")) return NULL;
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) { close(fd); return NULL; }
  pthread_mutex_lock(&table_lock);
  if (open_count < MAX_OPEN) {
    for (uint64_t i = 0; i < SLOTS; i++) {
      struct entry *e = &table[(h + i) & (SLOTS - 1)];
      if (e->path == NULL) {
        e->fd = fd;
        e->len = st.st_size;
        e->head_len = make_head(e->head, sizeof e->head, st.st_size);
        __atomic_store_n(&e->path, strndup(path, n), __ATOMIC_RELEASE);
        open_count++;
        pthread_mutex_unlock(&table_lock);
        return e;
      }
      if (strlen(e->path) == n && memcmp(e->path, path, n) == 0) break; /* raced */
    }
  }
  pthread_mutex_unlock(&table_lock);
  tmp->fd = fd;
  tmp->len = st.st_size;
  tmp->head_len = make_head(tmp->head, sizeof tmp->head, st.st_size);
  *transient = 1;
  return tmp;
}

static const char not_found[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";

/* Answers every complete request in buf; returns 0 to keep the connection. */
static int answer(int c, char *buf, size_t n) {
  buf[n] = 0;
  char *at = buf;
  while (at < buf + n) {
    char *end = strstr(at, "\r\n\r\n");
    if (!end) return -1; /* a request split across reads: not worth handling here */
    if (strncmp(at, "GET ", 4) != 0) return -1;
    char *path = at + 4, *sp = memchr(path, ' ', end - path);
    if (!sp) return -1;
    struct entry tmp, *e;
    int transient;
    e = lookup(path, sp - path, &tmp, &transient);
    if (!e) {
      if (send(c, not_found, sizeof not_found - 1, MSG_NOSIGNAL) < 0) return -1;
    } else {
      if (send(c, e->head, e->head_len, MSG_MORE | MSG_NOSIGNAL) != e->head_len) return -1;
      off_t off = 0;
      while (off < e->len) {
        ssize_t s = sendfile(c, e->fd, &off, e->len - off);
        if (s <= 0) {
          if (s < 0 && errno == EAGAIN) { /* socket full: wait for room, simply */
            fd_set w; FD_ZERO(&w); FD_SET(c, &w); select(c + 1, NULL, &w, NULL, NULL);
            continue;
          }
          if (transient) close(e->fd);
          return -1;
        }
      }
      if (transient) close(e->fd);
    }
    at = end + 4;
  }
  return 0;
}

static void *worker(void *arg) {
  (void)arg;
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
  if (bind(l, (void *)&a, sizeof a) || listen(l, 1024)) { perror("bind"); exit(1); }
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
  if (argc < 3) { fprintf(stderr, "usage: ceiling-epoll PORT ROOT [THREADS]\n"); return 2; }
  port = atoi(argv[1]);
  root = argv[2];
  int threads = argc > 3 ? atoi(argv[3]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  pthread_t t[64];
  for (int i = 0; i < threads && i < 64; i++) pthread_create(&t[i], NULL, worker, NULL);
  fprintf(stdout, "listening on http://127.0.0.1:%d\n", port);
  fflush(stdout);
  pthread_join(t[0], NULL);
  return 0;
}
