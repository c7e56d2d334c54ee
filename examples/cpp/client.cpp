// A C++ client of the fastpacket relay (fastpacket/relay.py), built on the
// header-only core in csrc/ alone: SendBuffer encodes and coalesces the
// packets, FrameDecoder frames the reply stream. No Python involved.
//
//   fastpacket_client                      offline: encode 10,000 MOVEs, decode
//                                          them back in odd-sized chunks, check
//   fastpacket_client HOST PORT [MOVES]    join room 0 of a relay (`fastpacket
//                                          serve`), send MOVES one at a time,
//                                          print the round-trip percentiles
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fastpacket/framing.hpp"
#include "fastpacket/sendbuf.hpp"

using namespace fastpacket;

namespace {

constexpr std::uint16_t kMove = 1, kJoin = 2;
constexpr std::uint32_t kPlayer = 4242;

std::uint64_t now_ns() {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count());
}

// MOVE payload: x, y, z (i32), sent_ns (u64), little-endian (this example
// assumes a little-endian host, as the wire format is).
void move_payload(std::uint8_t out[20], std::int32_t x, std::int32_t y, std::int32_t z, std::uint64_t t) {
    std::memcpy(out, &x, 4);
    std::memcpy(out + 4, &y, 4);
    std::memcpy(out + 8, &z, 4);
    std::memcpy(out + 12, &t, 8);
}

// Feeds `n` bytes to the decoder; calls on_packet(header, payload, payload_len) per complete packet.
template <class F>
bool feed(FrameDecoder& dec, const std::uint8_t* in, std::size_t n, std::vector<std::uint8_t>& out,
          std::vector<std::uint8_t>& index, F&& on_packet) {
    const Layout& l = dec.layout();
    FrameDecoder::FeedPlan plan = dec.plan(in, n);
    out.resize(plan.data_bytes);
    index.resize(index_bytes(plan.count, l.header_size));
    IndexColumns cols = index_view(index.data(), plan.count, l.header_size);
    dec.emit(in, n, plan, out.data(), cols);
    for (std::size_t i = 0; i < plan.count; ++i) {
        const std::uint8_t* frame = out.data() + cols.offsets[i];
        on_packet(cols.headers + i * l.header_size, frame + l.header_size, cols.sizes[i] - l.header_size);
    }
    if (plan.error.kind != FrameError::none) {
        std::fprintf(stderr, "protocol error at stream offset %llu: frame size %lld\n",
                     static_cast<unsigned long long>(plan.error.stream_offset),
                     static_cast<long long>(plan.error.frame_size));
        return false;
    }
    return true;
}

int offline() {
    const Layout l = game_layout();
    std::vector<std::uint8_t> wire, chunk(1 << 16);
    SendBuffer sb(l, chunk.size());
    std::uint8_t payload[20];
    const int total = 10000;
    sb.attach(chunk.data());
    for (int i = 0; i < total; ++i) {
        move_payload(payload, i, -i, 7, static_cast<std::uint64_t>(i) * 1000);
        std::uint64_t seq = 0;
        EncodeError err;
        SendStatus st = sb.send(kMove, payload, sizeof payload, kPlayer, false, 0, &seq, &err);
        if (st == SendStatus::full) {  // "flush": append the coalesced packets to the wire
            wire.insert(wire.end(), sb.data(), sb.data() + sb.size());
            sb.attach(chunk.data());
            st = sb.send(kMove, payload, sizeof payload, kPlayer, false, 0, &seq, &err);
        }
        if (st != SendStatus::ok) return std::fprintf(stderr, "send failed\n"), 1;
    }
    wire.insert(wire.end(), sb.data(), sb.data() + sb.size());
    FrameDecoder dec(l, 65535);
    std::vector<std::uint8_t> out, index;
    int seen = 0, bad = 0;
    for (std::size_t pos = 0, step = 1; pos < wire.size(); pos += step, step = step * 7 % 997 + 1) {
        const std::size_t n = std::min(step, wire.size() - pos);
        feed(dec, wire.data() + pos, n, out, index, [&](const std::uint8_t* h, const std::uint8_t* p, std::size_t len) {
            std::int32_t x;
            std::memcpy(&x, p, 4);
            if (l.read(h, l.type_index) != kMove || l.read(h, l.seq_index) != std::uint64_t(seen) || len != 20 ||
                x != seen)
                ++bad;
            ++seen;
        });
    }
    std::printf("offline: %d MOVEs encoded (%zu bytes), %d decoded from odd-sized chunks, %d wrong\n", total,
                wire.size(), seen, bad);
    return seen == total && bad == 0 && dec.pending() == 0 ? 0 : 1;
}

int online(const char* host, const char* port, int moves) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == nullptr)
        return std::fprintf(stderr, "cannot resolve %s:%s\n", host, port), 1;
    int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        freeaddrinfo(res);
        return std::perror("connect"), 1;
    }
    freeaddrinfo(res);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    const Layout l = game_layout();
    std::vector<std::uint8_t> sendmem(4096), recvmem(1 << 16), out, index;
    SendBuffer sb(l, sendmem.size());
    FrameDecoder dec(l, 65535);
    std::vector<double> rtts;
    auto write_all = [&]() -> bool {
        for (std::size_t off = 0; off < sb.size();) {
            ssize_t w = ::send(fd, sb.data() + off, sb.size() - off, 0);
            if (w <= 0) return false;
            off += static_cast<std::size_t>(w);
        }
        sb.attach(sendmem.data());
        return true;
    };
    std::uint64_t seq;
    EncodeError err;
    sb.attach(sendmem.data());
    const std::uint32_t room = 0;
    sb.send(kJoin, reinterpret_cast<const std::uint8_t*>(&room), 4, kPlayer, false, 0, &seq, &err);
    for (int i = 0; i < moves; ++i) {
        std::uint8_t payload[20];
        move_payload(payload, i, i, 0, now_ns());
        sb.send(kMove, payload, sizeof payload, kPlayer, false, 0, &seq, &err);
        if (!write_all()) return std::perror("send"), 1;
        bool own = false;
        while (!own) {  // read until our own MOVE comes back (others' moves are relayed too)
            ssize_t r = ::recv(fd, recvmem.data(), recvmem.size(), 0);
            if (r <= 0) return std::fprintf(stderr, "server closed the connection\n"), 1;
            bool ok = feed(dec, recvmem.data(), static_cast<std::size_t>(r), out, index,
                           [&](const std::uint8_t* h, const std::uint8_t* p, std::size_t len) {
                               if (l.read(h, l.type_index) != kMove || l.read(h, l.player_id_index) != kPlayer ||
                                   len < 20)
                                   return;
                               std::uint64_t t;
                               std::memcpy(&t, p + 12, 8);
                               rtts.push_back((now_ns() - t) / 1e3);
                               own = true;
                           });
            if (!ok) return 1;
        }
    }
    close(fd);
    std::sort(rtts.begin(), rtts.end());
    auto pct = [&](double q) { return rtts[std::min(rtts.size() - 1, static_cast<std::size_t>(q * rtts.size()))]; };
    std::printf("%zu round trips to %s:%s: p50 %.0f us, p99 %.0f us, max %.0f us\n", rtts.size(), host, port,
                pct(0.50), pct(0.99), rtts.back());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 1) return offline();
    if (argc < 3) return std::fprintf(stderr, "usage: %s [HOST PORT [MOVES]]\n", argv[0]), 2;
    return online(argv[1], argv[2], argc > 3 ? std::max(1, std::atoi(argv[3])) : 1000);
}
