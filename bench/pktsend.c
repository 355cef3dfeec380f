/* bench/pktsend.c — send a bounded number of small UDP frames as fast as possible.
 *
 * Used by bench/live.py, compiled at bench time into build/bench/pktsend. An AF_PACKET raw
 * socket with PACKET_QDISC_BYPASS hands prebuilt Ethernet frames straight to the driver
 * (veth_xmit) in batches with sendmmsg(). The UDP source port runs over NPORTS values so
 * the receiver's flow table holds NPORTS flows. Frames are 60 bytes (the Ethernet minimum
 * without FCS): 14 Ethernet + 20 IPv4 + 8 UDP + 18 payload; the UDP checksum is 0 (none).
 *
 *   pktsend IFACE SRC_MAC DST_MAC SRC_IP DST_IP COUNT NPORTS
 *
 * Prints one line: "sent=N seconds=S" (N = frames the kernel accepted).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME_LEN 60
#define BATCH 256
#define SPORT_BASE 10000
#define DPORT 9 /* discard */

static int parse_mac(const char *s, uint8_t *mac)
{
    return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3],
                  &mac[4], &mac[5]) == 6 ? 0 : -1;
}

static uint16_t ip_checksum(const uint8_t *p, size_t n)
{
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < n; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

static void build_frame(uint8_t *f, const uint8_t *src_mac, const uint8_t *dst_mac,
                        struct in_addr src, struct in_addr dst, uint16_t sport)
{
    uint16_t csum;

    memset(f, 0, FRAME_LEN);
    memcpy(f, dst_mac, 6);
    memcpy(f + 6, src_mac, 6);
    f[12] = 0x08; /* IPv4 */
    f[13] = 0x00;
    uint8_t *ip = f + 14;
    ip[0] = 0x45;
    ip[2] = 0;
    ip[3] = FRAME_LEN - 14; /* total length 46 */
    ip[8] = 64;             /* TTL */
    ip[9] = 17;             /* UDP */
    memcpy(ip + 12, &src, 4);
    memcpy(ip + 16, &dst, 4);
    csum = ip_checksum(ip, 20);
    ip[10] = (uint8_t)(csum >> 8);
    ip[11] = (uint8_t)csum;
    uint8_t *udp = ip + 20;
    udp[0] = (uint8_t)(sport >> 8);
    udp[1] = (uint8_t)sport;
    udp[2] = 0;
    udp[3] = DPORT;
    udp[5] = FRAME_LEN - 34; /* UDP length 26 */
    memcpy(udp + 8, "mld-bench-pktsend", 17);
}

int main(int argc, char **argv)
{
    uint8_t src_mac[6], dst_mac[6];
    struct in_addr src, dst;
    struct sockaddr_ll sll;
    struct timespec t0, t1;
    int one = 1;

    if (argc != 8 || parse_mac(argv[2], src_mac) || parse_mac(argv[3], dst_mac) ||
        !inet_aton(argv[4], &src) || !inet_aton(argv[5], &dst)) {
        fprintf(stderr, "usage: %s IFACE SRC_MAC DST_MAC SRC_IP DST_IP COUNT NPORTS\n", argv[0]);
        return 2;
    }
    long long count = atoll(argv[6]);
    int nports = atoi(argv[7]);
    if (count <= 0 || nports <= 0 || nports > 50000) {
        fprintf(stderr, "pktsend: COUNT must be > 0 and NPORTS in 1..50000\n");
        return 2;
    }

    int fd = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: send only, receive nothing */
    if (fd < 0) {
        perror("pktsend: socket(AF_PACKET)");
        return 1;
    }
    if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0)
        perror("pktsend: PACKET_QDISC_BYPASS (going through the qdisc)");
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = (int)if_nametoindex(argv[1]);
    sll.sll_halen = 6;
    memcpy(sll.sll_addr, dst_mac, 6);
    if (sll.sll_ifindex == 0) {
        fprintf(stderr, "pktsend: no interface %s\n", argv[1]);
        return 1;
    }
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
        perror("pktsend: bind");
        return 1;
    }

    uint8_t *frames = malloc((size_t)nports * FRAME_LEN);
    struct mmsghdr *msgs = calloc(BATCH, sizeof(*msgs));
    struct iovec *iov = calloc(BATCH, sizeof(*iov));
    if (!frames || !msgs || !iov) {
        fprintf(stderr, "pktsend: out of memory\n");
        return 1;
    }
    for (int i = 0; i < nports; i++)
        build_frame(frames + (size_t)i * FRAME_LEN, src_mac, dst_mac, src, dst,
                    (uint16_t)(SPORT_BASE + i));

    long long sent = 0;
    long long next = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (sent < count) {
        int n = count - sent < BATCH ? (int)(count - sent) : BATCH;
        for (int i = 0; i < n; i++) {
            iov[i].iov_base = frames + (size_t)((next + i) % nports) * FRAME_LEN;
            iov[i].iov_len = FRAME_LEN;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &sll;
            msgs[i].msg_hdr.msg_namelen = sizeof(sll);
        }
        int r = sendmmsg(fd, msgs, (unsigned)n, 0);
        if (r < 0) {
            if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR)
                continue;
            perror("pktsend: sendmmsg");
            return 1;
        }
        sent += r;
        next += r;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("sent=%lld seconds=%.6f\n", sent, secs);
    close(fd);
    return 0;
}
