"""bot-detection: refuse requests whose User-Agent names a bot (Kong's bot-detection plugin).

A User-Agent matching an `allow` regex passes; else one matching a `deny` regex, or one of
the known bots, gets 403 `Forbidden`. A request with several User-Agent headers gets 400.
Requests without one pass. Decisions are cached per User-Agent (LRU, per plugin instance),
keyed by the User-Agent's SHA-256 so a cache full of long User-Agents stays small.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
from cachetools import LRUCache

from .._exceptions import ConfigurationError, PathPart
from .._responses import error_response
from ._base import Plugin
from ._registry import register

if TYPE_CHECKING:
    from .._context import Context
    from .._responses import Response

__all__ = ["BotDetection"]

# Kong's patterns come from ua-parser's uap-core list (regexes.yaml, Apache-2.0). Kong asks
# only "does one of them occur in the User-Agent?", so here each is reduced to what decides
# that: capture groups and optional tails (version numbers) cannot change the answer and
# are left out. The two with `.*` are anchored and atomic, so a long User-Agent repeating
# their first word costs one pass instead of one pass per repetition.
_CRAWLERS = (
    "CSimpleSpider", "Cityreview Robot", "CrawlDaddy", "CrawlFire", "Finderbots",
    "Index crawler", "Job Roboter", "KiwiStatus Spider", "Lijit Crawler",
    "QuerySeekerSpider", "ScollSpider", "Trends Crawler", "USyd-NLP-Spider",
    "SiteCat Webbot", r"BotName/\$BotVersion", "123metaspider-Bot", r"1470\.net crawler",
    r"50\.nu", "8bo Crawler Bot", "Aboundex", "Accoona-[A-z]{1,30}-Agent", "AdsBot-Google",
    "altavista", "AppEngine-Google", r"archive.{0,30}\.org_bot", "archiver", "Ask Jeeves",
    "[Bb]ai[Dd]u[Ss]pider-[A-Za-z]", "bingbot", "BingPreview", "blitzbot", "BlogBridge",
    "Bloglovin", "BoardReader Blog Indexer", "BoardReader Favicon Fetcher", "boitho.com-dc",
    "BotSeer", "BUbiNG", r"\b\w{0,30}favicon\w{0,30}\b", r"\bYeti", "Catchpoint",
    "[Cc]harlotte", "Checklinks", "clumboot", r"Comodo HTTP\(S\) Crawler",
    "Comodo-Webinspector-Crawler", "ConveraCrawler", "CRAWL-E", "CrawlConvera", "Daumoa",
    "Feed Seeker Bot", "Feedbin", "findlinks", "Flamingo_SearchEngine", "FollowSite Bot",
    "furlbot", "Genieo", "gigabot", "GomezAgent", "gonzo1", "Googlebot", "Google SketchUp",
    "grub-client", "gsa-crawler", "heritrix", "HiddenMarket", "holmes", "HooWWWer", "htdig",
    "ia_archiver", "ICC-Crawler", "Icarus6j", "ichiro", "IconSurf", "IlTrovatore",
    "InfuzApp", "Innovazion Crawler", "InternetArchive", "IP2[a-z]{1,30}Bot", r"jbot\b",
    "KaloogaBot", "Kraken", "Kurzor", "larbin", "LEIA", "LesnikBot", "Linguee Bot",
    "LinkAider", "LinkedInBot", "Lite Bot", "Llaut", "lycos", r"Mail\.RU_Bot", "masscan",
    "masidani_bot", "Mediapartners-Google", "Microsoft .{0,30} Bot", "mogimogi", "mozDex",
    "MJ12bot", "msnbot", "msrbot", "Mtps Feed Aggregation System", "netresearch",
    "Netvibes", "NewsGator", "^NING", "Nutch", "Nymesis", "ObjectsSearch", "OgScrper",
    "Orbiter", "OOZBOT", "PagePeeker", "PagesInventory", "PaxleFramework",
    "Peeplo Screenshot Bot", "PlantyNet_WebRobot", "Pompos", "Qwantify", "Read%20Later",
    "Reaper", "RedCarpet", "Retreiver", "Riddler", "Rival IQ", "scooter", "Scrapy",
    "Scrubby", "searchsight", "seekbot", "semanticdiscovery", "SemrushBot", "Simpy",
    "SimplePie", "SEOstats", "SimpleRSS", "SiteCon", "Slackbot-LinkExpanding",
    "Slack-ImgProxy", "Slurp", "snappy", "Speedy Spider", "Squrl Java", "Stringer",
    "TheUsefulbot", "ThumbShotsBot", r"Thumbshots\.ru", "Tiny Tiny RSS", "Twitterbot",
    "WhatsApp", "URL2PNG", "Vagabondo", "VoilaBot", "^vortex", "Votay bot", "^voyager",
    "WASALive.Bot", "Web-sniffer", "WebThumb", "WeSEE:[A-z]", "WhatWeb", "WIRE",
    "WordPress", "Wotbox", r"www\.almaden\.ibm\.com", "Xenu(?:.s|) Link Sleuth",
    "Xerka [A-z]{1,30}Bot", "yacy", "YahooSeeker", "Yahoo! Slurp", r"Yandex\w", "YodaoBot",
    "YottaaMonitor", "Yowedo", "^Zao", r"ZeBot_www\.ze\.bz", "ZooShot", "ZyBorg",
)  # fmt: skip
_VERSIONED = (
    "008", "Altresium", "Argus", "BaiduMobaider", "BoardReader", "DNSGroup",
    "DataparkSearch", "EDI", "Goodzer", "Grub", "INGRID", "Infohelfer", "LinkedInBot", "LOOQ",
    "Nutch", "OgScrper", "PathDefender", "Peew", "PostPost", "Steeler", "Twitterbot", "VSE",
    "WebCrunch", "WebZIP", "Y!J-BR[A-Z]", "YahooSeeker", "envolk", "sproose", "wminer",
)  # fmt: skip
_DOWNLOADERS = (
    "Google-HTTP-Java-Client", "Apache-HttpClient", "Go-http-client", "scalaj-http",
    "http%20client", "Python-urllib", "HttpMonitor", "TLSProber", "WinHTTP", "JNLP",
    "okhttp", "aihttp", "reqwest", "axios", "unirest-(?:java|python|ruby|nodejs|php|net)",
)  # fmt: skip

BOTS: tuple[str, ...] = (
    r"Pingdom\.com_bot_version_\d+\.\d",
    r"facebookexternalhit/\d+\.\d",
    r"\A(?>.*?Google).*/\+/web/snippet",
    r"Twitterbot/\d+\.\d",
    r"\b(?:Boto3?|JetS3t|aws-(?:cli|sdk-(?:cpp|go|java|nodejs|ruby2?|dotnet-(?:\d{1,2}|core)))"
    r"|s3fs)/\d+\.\d",
    # Kong's ` PTST/\d+\.?\d+$` with the two digit runs made unambiguous: the same matches,
    # but a long run of digits not at the end costs one pass, not one per split point.
    r" PTST/(?:\d+\.\d+|\d{2,})$",
    r"/(?:(?:Ant-)?Nutch|[A-z]+[Bb]ot|[A-z]+[Ss]pider|Axtaris|fetchurl|Isara|ShopSalad"
    r"|Tailsweep)[ \-]\d",
    r"\b(?:" + "|".join(_VERSIONED) + r")/\d",
    r"\A(?>.*?MSIE \d+\.\d+(?:[a-z]\d|[a-z]|);).* MSIECrawler",
    "(?:" + "|".join(_DOWNLOADERS) + ")",
    "(?:" + "|".join(_CRAWLERS) + ")",
    r"(?:[Aa]rchiver|[Ii]ndexer|[Ss]craper|[Bb]ot|[Ss]pider|[Cc]rawl[a-z]{0,50})[/ ]\d",
    r"[Ss][Pp][Ii][Dd][Ee][Rr]|[Ss]crape|[Cc][Rr][Aa][Ww][Ll]",
)
"""The known bots: a User-Agent in which one of these regexes is found is a bot's."""

# Kong's regexes are PCRE without UTF mode: \w, \d and \b are ASCII only.
_FLAGS = re.ASCII
_BOT_PATTERNS = tuple(re.compile(p, _FLAGS) for p in BOTS)
_CACHE_SIZE = 10_000


def _key(user_agent: str) -> bytes:
    # A digest, not the User-Agent: 10,000 User-Agents of 16 KB each would hold 160 MB.
    return hashlib.sha256(user_agent.encode("utf-8", "surrogateescape")).digest()


class _Decisions:
    """User-Agent -> refused?, for the most recent `_CACHE_SIZE` User-Agents seen."""

    __slots__ = ("_cache", "_lock")

    def __init__(self) -> None:
        self._cache: LRUCache[bytes, bool] = LRUCache(maxsize=_CACHE_SIZE)
        # A cache read reorders it: the lock keeps a gateway served from several threads safe.
        self._lock = threading.Lock()

    def get(self, user_agent: str) -> bool | None:
        key = _key(user_agent)
        with self._lock:
            return self._cache.get(key)

    def put(self, user_agent: str, refused: bool) -> None:
        key = _key(user_agent)
        with self._lock:
            self._cache[key] = refused


@attrs.frozen(kw_only=True)
class BotDetection(Plugin):
    """Refuse bots, by User-Agent: `deny` regexes and a built-in list of known bots.

        BotDetection(allow=[r"^MyMonitor/"], deny=[r"(?i)curl"])

    `allow` wins over both `deny` and the built-in list. Regexes are searched for anywhere
    in the User-Agent (anchor them with `^` / `$`), as Kong's are.
    """

    name = "bot-detection"
    priority = 2500
    scopes = frozenset({"global", "service", "route"})

    allow: Sequence[str] = ()
    deny: Sequence[str] = ()
    # Compiled once; the decision cache (neither is configuration).
    _allow: tuple[re.Pattern[str], ...] = attrs.field(init=False, default=(), eq=False, repr=False)
    _deny: tuple[re.Pattern[str], ...] = attrs.field(init=False, default=(), eq=False, repr=False)
    _decisions: _Decisions | None = attrs.field(init=False, default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        errors: list[tuple[tuple[PathPart, ...], str]] = []
        for name in ("allow", "deny"):
            compiled = []
            for i, pattern in enumerate(getattr(self, name)):
                try:
                    compiled.append(re.compile(pattern, _FLAGS))
                except re.error:
                    errors.append(((name, i), f"not a valid regex: {pattern}"))
            object.__setattr__(self, f"_{name}", tuple(compiled))
        if errors:
            raise ConfigurationError(errors=errors)
        object.__setattr__(self, "_decisions", _Decisions())

    async def access(self, ctx: Context) -> Response | None:
        agents = ctx.request.headers.getlist("user-agent")
        if not agents:
            return None
        accept = ctx.request.headers.get("accept")
        if len(agents) > 1:
            return error_response(
                400, "Only one User-Agent header allowed", ctx.request_id, accept=accept
            )
        user_agent = agents[0]
        assert self._decisions is not None
        refused = self._decisions.get(user_agent)
        if refused is None:
            refused = self.refuses(user_agent)
            self._decisions.put(user_agent, refused)
        if refused:
            return error_response(403, "Forbidden", ctx.request_id, accept=accept)
        return None

    def refuses(self, user_agent: str) -> bool:
        """Would this User-Agent be refused? (Not cached.)"""
        agent = user_agent.strip()
        if any(p.search(agent) for p in self._allow):
            return False
        if any(p.search(agent) for p in self._deny):
            return True
        return any(p.search(agent) for p in _BOT_PATTERNS)


register(BotDetection)
