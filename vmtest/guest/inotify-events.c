/*
 * inotify-events DIR...: print one line per inotify event on each DIR until killed, in
 * busybox inotifyd's notation ("LETTERS<TAB>DIR<TAB>NAME"; n create, d delete, c modify,
 * w close-write, e attrib, m moved-from, y moved-to). Debian's busybox-static has no inotifyd,
 * so the VM test builds this with `cc -static` and puts it in the guest.
 */
#include <limits.h>
#include <stdio.h>
#include <sys/inotify.h>
#include <unistd.h>

#define MASK (IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO)

int main(int argc, char **argv) {
    static const struct { unsigned bit; char letter; } names[] = {
        {IN_CREATE, 'n'}, {IN_DELETE, 'd'}, {IN_MODIFY, 'c'}, {IN_CLOSE_WRITE, 'w'},
        {IN_ATTRIB, 'e'}, {IN_MOVED_FROM, 'm'}, {IN_MOVED_TO, 'y'}, {IN_Q_OVERFLOW, 'o'},
    };
    const char *dirs[64];
    int fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0 || argc < 2 || argc > 64) {
        fprintf(stderr, "usage: inotify-events DIR... (at most 63)\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        int wd = inotify_add_watch(fd, argv[i], MASK);
        if (wd < 0 || wd >= 64) {
            perror(argv[i]);
            return 1;
        }
        dirs[wd] = argv[i];
    }
    fprintf(stderr, "inotify-events: watching %d director%s\n", argc - 1, argc == 2 ? "y" : "ies");
    char buf[64 * (sizeof(struct inotify_event) + NAME_MAX + 1)]
        __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            return 1;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            char letters[16];
            int k = 0;
            for (unsigned j = 0; j < sizeof names / sizeof names[0]; j++)
                if (ev->mask & names[j].bit)
                    letters[k++] = names[j].letter;
            letters[k] = 0;
            if (k)
                printf("%s\t%s\t%s\n", letters, ev->wd >= 0 && ev->wd < 64 ? dirs[ev->wd] : "?",
                       ev->len ? ev->name : "");
            p += sizeof(struct inotify_event) + ev->len;
        }
    }
}
