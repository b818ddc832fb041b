/* Runs the no_std library's functions from C: the round trip (emit, check,
   parse) must give back the advertisement sent, with an allocator that has
   no memory, and a malformed datagram must be refused. Built and run by
   .ci/run. */
#include <stdio.h>
int nostd_check_roundtrip(unsigned char vrid, unsigned char priority);
int nostd_check_datagram(unsigned char a, unsigned char b);
/* Never called: the library aborts on panic; the precompiled alloc crate
   still names the unwinder's personality routine. */
void rust_eh_personality(void) {}

int main(void) {
    int r = nostd_check_roundtrip(51, 150);
    int bad = nostd_check_datagram(0x45, 0);
    printf("roundtrip %d, malformed %d\n", r, bad);
    return r == 0 && bad == 1 ? 0 : 1;
}
