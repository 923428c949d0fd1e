/*
 * echo_target: a plain TCP echo server (epoll, one thread, Linux), the target every
 * terminator forwards to in benchmarks/terminator.py.  In C so that the target costs
 * little and is the same for all of them.
 *
 * Build:  cc -O2 -o echo_target benchmarks/echo_target.c
 * Usage:  echo_target   (binds 127.0.0.1 on a free port, prints "listening on 127.0.0.1:PORT")
 *
 * Each connection reads at most BUF bytes and writes them all back before it reads
 * again: a client that does not read its echo stops being read (backpressure).  A
 * client's EOF, read once its echo is written, is answered with a close.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { BUF = 262144, MAX_EVENTS = 256 };

struct conn {
    int fd;
    size_t have, sent; /* bytes read into buf, and written back of them */
    char buf[BUF];
};

static int epfd;

static void watch(struct conn *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0) {
        perror("epoll_ctl");
        exit(1);
    }
}

static void finish(struct conn *c) {
    close(c->fd); /* also leaves the epoll set */
    free(c);
}

/* Write back what is pending; 1 while the connection lives. */
static int flush(struct conn *c) {
    while (c->sent < c->have) {
        /* MSG_NOSIGNAL: a terminator that hangs up mid-echo must not kill us with SIGPIPE. */
        ssize_t n = send(c->fd, c->buf + c->sent, c->have - c->sent, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            watch(c, EPOLLOUT, EPOLL_CTL_MOD);
            return 1;
        }
        if (n <= 0)
            return 0;
        c->sent += (size_t)n;
    }
    c->have = c->sent = 0;
    watch(c, EPOLLIN, EPOLL_CTL_MOD);
    return 1;
}

static int serve(struct conn *c) {
    if (c->have)
        return flush(c);
    ssize_t n = read(c->fd, c->buf, BUF);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK;
    if (n == 0)
        return 0;
    c->have = (size_t)n;
    return flush(c);
}

int main(void) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &len) < 0) {
        perror("listen");
        return 1;
    }
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *fresh = calloc(1, sizeof *fresh);
                    if (fresh == NULL) {
                        close(fd);
                        continue;
                    }
                    fresh->fd = fd;
                    watch(fresh, EPOLLIN, EPOLL_CTL_ADD);
                }
            } else if (!serve(c)) {
                finish(c);
            }
        }
    }
}
