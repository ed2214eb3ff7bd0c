/* wavinfo - print "RATE CHANNELS FRAMES FORMAT" of an audio file as libsndfile reads it back
 * (used by the end-to-end tests to check what the pipeline wrote). */
#include <sndfile.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: wavinfo FILE\n");
        return 2;
    }
    SF_INFO info = {0};
    SNDFILE *f = sf_open(argv[1], SFM_READ, &info);
    if (!f) {
        fprintf(stderr, "wavinfo: %s: %s\n", argv[1], sf_strerror(NULL));
        return 1;
    }
    const char *major = (info.format & SF_FORMAT_TYPEMASK) == SF_FORMAT_WAV ? "wav"
                        : (info.format & SF_FORMAT_TYPEMASK) == SF_FORMAT_FLAC ? "flac" : "other";
    int sub = info.format & SF_FORMAT_SUBMASK;
    const char *fmt = sub == SF_FORMAT_PCM_16 ? "pcm16" : sub == SF_FORMAT_PCM_24 ? "pcm24" : sub == SF_FORMAT_FLOAT ? "f32" : "other";
    printf("%d %d %lld %s-%s\n", info.samplerate, info.channels, (long long)info.frames, major, fmt);
    sf_close(f);
    return 0;
}
