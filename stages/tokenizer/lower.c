/* lower.c - Python's str.lower for UTF-8 text (MODEL.md §2 lower-cases tags and lyrics).
 *
 * What CPython does, and how we get it:
 *  - each code point gets its full lowercase mapping.  The simple mappings come from utf8proc
 *    (utf8proc_tolower).  The only unconditional multi-code-point lowercase mapping in Unicode's
 *    SpecialCasing is U+0130 'İ' -> "i" U+0307, which CPython applies and utf8proc does not.
 *  - U+03A3 'Σ' becomes final sigma 'ς' in the Final_Sigma context: preceded by a cased letter
 *    (skipping case-ignorable ones) and not followed by one (skipping case-ignorable ones); else
 *    'σ'.  Cased and Case_Ignorable are the Unicode derived properties; we compute them from
 *    utf8proc's general category plus the short lists that the derivation adds (below).
 * tests/test_tokenizer.c checks all of this against tables produced by CPython itself
 * (tests/fixtures/tokenizer/lower_cases.json). */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "bpe.h"
#include "hm.h"
#include "utf8.h"

typedef struct { uint32_t lo, hi; } cprange;

/* Other_Lowercase + Other_Uppercase (PropList.txt): cased although not Ll/Lu/Lt. */
static const cprange other_cased[] = {
    {0x00AA, 0x00AA}, {0x00BA, 0x00BA}, {0x02B0, 0x02B8}, {0x02C0, 0x02C1}, {0x02E0, 0x02E4},
    {0x0345, 0x0345}, {0x037A, 0x037A}, {0x10FC, 0x10FC}, {0x1D2C, 0x1D6A}, {0x1D78, 0x1D78},
    {0x1D9B, 0x1DBF}, {0x2071, 0x2071}, {0x207F, 0x207F}, {0x2090, 0x209C}, {0x2160, 0x217F},
    {0x24B6, 0x24E9}, {0x2C7C, 0x2C7D}, {0xA69C, 0xA69D}, {0xA770, 0xA770}, {0xA7F2, 0xA7F4},
    {0xA7F8, 0xA7F9}, {0xAB5C, 0xAB5F}, {0xAB69, 0xAB69}, {0x10780, 0x10780},
    {0x10783, 0x10785}, {0x10787, 0x107B0}, {0x107B2, 0x107BA}, {0x1E030, 0x1E06D},
    {0x1F130, 0x1F149}, {0x1F150, 0x1F169}, {0x1F170, 0x1F189},
};

/* Word_Break MidLetter, MidNumLet and Single_Quote: case-ignorable by definition. */
static const uint32_t wb_ignorable[] = {
    0x0027, 0x002E, 0x003A, 0x00B7, 0x0387, 0x055F, 0x05F4, 0x2018, 0x2019,
    0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A,
};

static int in_ranges(uint32_t c, const cprange *r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (c >= r[i].lo && c <= r[i].hi) return 1;
    return 0;
}

static int is_cased(uint32_t c)
{
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    if (k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT)
        return 1;
    return in_ranges(c, other_cased, HM_ARRAY_LEN(other_cased));
}

static int is_case_ignorable(uint32_t c)
{
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_SK:
        return 1;
    default:
        break;
    }
    for (size_t i = 0; i < HM_ARRAY_LEN(wb_ignorable); i++)
        if (wb_ignorable[i] == c) return 1;
    return 0;
}


/* Final_Sigma for the Σ at bytes [pos, pos+2) of s[0..n). */
static int final_sigma(const uint8_t *s, size_t n, size_t pos)
{
    size_t i = pos, adv;
    uint32_t c = 0;
    int found = 0;
    while (i > 0) {
        size_t p = i - 1;
        while (p > 0 && (s[p] & 0xC0) == 0x80) p--;
        c = hm_utf8_decode(s + p, &adv);
        i = p;
        if (!is_case_ignorable(c)) { found = 1; break; }
    }
    if (!found || !is_cased(c)) return 0;
    for (i = pos + 2; i < n; i += adv) {
        c = hm_utf8_decode(s + i, &adv);
        if (!is_case_ignorable(c)) return !is_cased(c);
    }
    return 1;
}

int tok_lower(const char *in, size_t len, char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (len > TOK_MAX_TEXT_BYTES)
        return hm_err("text of %zu bytes is larger than the %zu-byte limit", len,
                      TOK_MAX_TEXT_BYTES);
    if (len > 0 && !in) return hm_err("text is NULL");
    if (tok_utf8_check(in, len, "text") != HM_OK) return HM_ERR;
    /* A lowercase mapping grows a code point by at most half (2 -> 3 bytes). */
    char *o = hm_malloc(len + len / 2 + 4);
    const uint8_t *s = (const uint8_t *)in;
    size_t k = 0, adv;
    for (size_t i = 0; i < len; i += adv) {
        if (s[i] < 0x80) {
            o[k++] = (char)(s[i] >= 'A' && s[i] <= 'Z' ? s[i] + 32 : s[i]);
            adv = 1;
            continue;
        }
        uint32_t c = hm_utf8_decode(s + i, &adv), l;
        if (c == 0x0130) {
            o[k++] = 'i';
            l = 0x0307;
        } else if (c == 0x03A3) {
            l = final_sigma(s, len, i) ? 0x03C2 : 0x03C3;
        } else {
            l = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
        }
        k += (size_t)utf8proc_encode_char((utf8proc_int32_t)l, (utf8proc_uint8_t *)o + k);
    }
    o[k] = 0;
    *out = o;
    *outlen = k;
    return HM_OK;
}
