/* The lightest lab that still answers like one, for benchmarks/replicas.py.

   It listens at the port of JUPYTERHUB_SERVICE_URL (as jupyterhub-singleuser does)
   and answers every request with 200 and a small JSON body, one connection at a
   time; SIGTERM ends it. About 1 MiB of memory per lab instead of ~25 MiB for
   tests/fakelab.py, so a thousand labs fit beside the backend on a 2-core machine.

   Built by the benchmark with: cc -O2 -o tinylab tinylab.c */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char ANSWER[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: 19\r\n"
    "Connection: close\r\n"
    "\r\n"
    "{\"version\": \"tiny\"}";

int main(void) {
    const char *url = getenv("JUPYTERHUB_SERVICE_URL");
    if (url == NULL) {
        fprintf(stderr, "tinylab: JUPYTERHUB_SERVICE_URL is not set\n");
        return 2;
    }
    /* http://HOST:PORT/prefix/ : the port follows the last ':' before the path */
    const char *host = strstr(url, "://");
    host = host ? host + 3 : url;
    const char *slash = strchr(host, '/');
    size_t host_len = slash ? (size_t)(slash - host) : strlen(host);
    const char *colon = memchr(host, ':', host_len);
    if (colon == NULL) {
        fprintf(stderr, "tinylab: no port in %s\n", url);
        return 2;
    }
    char host_name[64] = "127.0.0.1";
    size_t name_len = (size_t)(colon - host);
    if (name_len > 0 && name_len < sizeof host_name) {
        memcpy(host_name, host, name_len);
        host_name[name_len] = '\0';
    }
    int port = atoi(colon + 1);

    int server = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (inet_pton(AF_INET, host_name, &addr.sin_addr) != 1) {
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    if (bind(server, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(server, 16) != 0) {
        perror("tinylab: bind");
        return 1;
    }
    printf("tinylab listening on %s:%d\n", host_name, port);
    fflush(stdout);
    char request[4096];
    for (;;) {
        int conn = accept(server, NULL, NULL);
        if (conn < 0) {
            continue;
        }
        /* one read is enough for a probe's GET; the answer does not depend on it */
        if (read(conn, request, sizeof request) > 0) {
            ssize_t sent = write(conn, ANSWER, sizeof ANSWER - 1);
            (void)sent;
        }
        close(conn);
    }
}
