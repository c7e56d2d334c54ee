// A non-blocking TCP listener on 127.0.0.1 registered with a new epoll
// instance: what the example servers (server.cpp, embed.cpp) share before
// their own loops. POSIX sockets and Linux epoll, like those servers.
#pragma once

#include <cstdint>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace fastpacket_examples {

// Pending connections the kernel may queue before accept4 takes them.
constexpr int kListenBacklog = 4096;

// Listens on 127.0.0.1:port (0: a port the kernel picks) into *lfd and makes
// *ep an epoll instance watching it for EPOLLIN with data.ptr == nullptr
// (how the servers tell the listener from a connection). Returns the port
// it listens on, or -1 (errno says why).
inline int listen_loopback(std::uint16_t port, int* lfd, int* ep) {
    *lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (*lfd < 0) return -1;
    int one = 1;
    ::setsockopt(*lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(*lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0 || ::listen(*lfd, kListenBacklog) < 0)
        return -1;
    socklen_t len = sizeof a;
    if (::getsockname(*lfd, reinterpret_cast<sockaddr*>(&a), &len) < 0) return -1;
    *ep = ::epoll_create1(EPOLL_CLOEXEC);
    if (*ep < 0) return -1;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;  // nullptr: the listening socket
    if (::epoll_ctl(*ep, EPOLL_CTL_ADD, *lfd, &ev) < 0) return -1;
    return ntohs(a.sin_port);
}

}  // namespace fastpacket_examples
