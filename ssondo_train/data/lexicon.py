"""Small word lists that espeak-ng reads aloud for the demo corpus (no number words: digits are a probe task).

Sentences are random word sequences: the grammar is nonsense, the phonetics are real, which is all an
unlabelled distillation corpus needs. Languages without a list get pseudo-words built from syllables, which
espeak-ng pronounces with that language's rules.
"""

from __future__ import annotations

import numpy as np

WORDS: dict[str, str] = {
    "en": "the house river morning garden window yellow quickly music children across beautiful weather "
    "kitchen mountain listen evening travel bright forest yesterday together whisper station market "
    "ocean paper silver winter summer follow because people orange doctor bottle teacher wonderful",
    "de": "der die das Haus Fluss Morgen Garten Fenster gelb schnell Musik Kinder schön Wetter Küche Berg "
    "hören Abend reisen hell Wald gestern zusammen flüstern Bahnhof Markt Meer Papier Winter Sommer "
    "folgen weil Leute Arzt Flasche Lehrer wunderbar",
    "fr-fr": "la maison rivière matin jardin fenêtre jaune vite musique enfants beau temps cuisine montagne "
    "écouter soir voyager clair forêt hier ensemble chuchoter gare marché océan papier hiver été "
    "suivre parce que gens médecin bouteille professeur merveilleux",
    "es": "la casa río mañana jardín ventana amarillo rápido música niños hermoso tiempo cocina montaña "
    "escuchar tarde viajar claro bosque ayer juntos susurrar estación mercado océano papel invierno "
    "verano seguir porque gente médico botella maestro maravilloso",
    "it": "la casa fiume mattina giardino finestra giallo veloce musica bambini bello tempo cucina montagna "
    "ascoltare sera viaggiare chiaro foresta ieri insieme sussurrare stazione mercato oceano carta "
    "inverno estate seguire perché gente medico bottiglia maestro meraviglioso",
    "pt": "a casa rio manhã jardim janela amarelo rápido música crianças bonito tempo cozinha montanha "
    "ouvir noite viajar claro floresta ontem juntos sussurrar estação mercado oceano papel inverno "
    "verão seguir porque pessoas médico garrafa professor maravilhoso",
    "nl": "het huis rivier ochtend tuin raam geel snel muziek kinderen mooi weer keuken berg luisteren "
    "avond reizen helder bos gisteren samen fluisteren station markt zee papier winter zomer volgen "
    "omdat mensen dokter fles leraar prachtig",
    "sv": "huset floden morgon trädgård fönster gul snabbt musik barnen vacker väder kök berget lyssna "
    "kväll resa ljus skogen igår tillsammans viska stationen torget havet papper vinter sommar följa "
    "eftersom människor läkare flaska lärare underbar",
    "pl": "dom rzeka rano ogród okno żółty szybko muzyka dzieci piękny pogoda kuchnia góra słuchać wieczór "
    "podróż jasny las wczoraj razem szeptać dworzec rynek ocean papier zima lato iść ponieważ ludzie "
    "lekarz butelka nauczyciel wspaniały",
    "ru": "дом река утро сад окно жёлтый быстро музыка дети красивый погода кухня гора слушать вечер "
    "путешествие светлый лес вчера вместе шептать вокзал рынок океан бумага зима лето потому люди "
    "врач бутылка учитель чудесный",
    "fi": "talo joki aamu puutarha ikkuna keltainen nopeasti musiikki lapset kaunis sää keittiö vuori "
    "kuunnella ilta matkustaa kirkas metsä eilen yhdessä kuiskata asema tori meri paperi talvi kesä "
    "seurata koska ihmiset lääkäri pullo opettaja ihana",
    "tr": "ev nehir sabah bahçe pencere sarı hızlı müzik çocuklar güzel hava mutfak dağ dinlemek akşam "
    "seyahat parlak orman dün birlikte fısıldamak istasyon pazar okyanus kağıt kış yaz izlemek çünkü "
    "insanlar doktor şişe öğretmen harika",
    "id": "rumah sungai pagi kebun jendela kuning cepat musik anak indah cuaca dapur gunung mendengar malam "
    "perjalanan terang hutan kemarin bersama berbisik stasiun pasar lautan kertas musim dingin panas "
    "mengikuti karena orang dokter botol guru luar biasa",
}

# Languages read as syllable pseudo-words (espeak-ng voice names).
SYLLABLE_LANGUAGES: tuple[str, ...] = (
    "cs",
    "hu",
    "ro",
    "hr",
    "sk",
    "da",
    "nb",
    "eu",
    "ca",
    "cy",
    "lv",
    "et",
    "sw",
)

_ONSETS = (
    "",
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "kr",
    "st",
    "tr",
)
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ou", "ea")
_CODAS = ("", "", "", "n", "r", "s", "l", "m", "k")


def lexicon_languages() -> list[str]:
    """Every espeak-ng voice name the corpus speaks in (word lists first, then syllable languages)."""
    return list(WORDS) + list(SYLLABLE_LANGUAGES)


def random_sentence(language: str, rng: np.random.Generator, n_words: int) -> str:
    """``n_words`` random words of ``language`` (pseudo-words for languages without a list)."""
    if language in WORDS:
        words = WORDS[language].split()
        return " ".join(words[int(i)] for i in rng.integers(0, len(words), n_words))
    out = []
    for _ in range(n_words):
        syllables = int(rng.integers(1, 4))
        out.append(
            "".join(
                _ONSETS[int(rng.integers(len(_ONSETS)))]
                + _NUCLEI[int(rng.integers(len(_NUCLEI)))]
                + _CODAS[int(rng.integers(len(_CODAS)))]
                for _ in range(syllables)
            )
        )
    return " ".join(out)
