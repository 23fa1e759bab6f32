// Cuts a streamed line into sentences as they complete, for text-to-speech and subtitle boxes.
// The same rules, and the same test cases (Tests/Editor/sentence_cases.json), as neeko_npc/server/sentences.py.
using System.Collections.Generic;
using System.Text;

namespace Neeko.Npc
{
    /// <summary>
    /// Feed it a line's text deltas in order; it returns each sentence once it is complete. A sentence ends at
    /// '.', '!' or '?' (a run of them, then any closing quotes or brackets) followed by white space and a
    /// character that is not a lower-case letter, or at a line break. Not at an ellipsis ("..." or "…"), an
    /// abbreviation ("Mr.", "Dr.", "St.", "e.g." ...), an initial ("J."), or a decimal point. Flush() returns
    /// the last sentence, which may have no stop at all.
    /// </summary>
    public sealed class SentenceSplitter
    {
        static readonly HashSet<string> Abbreviations = new HashSet<string>
        {
            "mr", "mrs", "ms", "dr", "st", "jr", "sr", "mt", "vs", "etc", "e.g", "i.e", "prof", "capt", "sgt", "lt", "col", "gen",
        };

        readonly StringBuilder _pending = new StringBuilder();

        /// <summary>Add a delta; returns the sentences it completed (often none).</summary>
        public List<string> Push(string delta)
        {
            _pending.Append(delta ?? "");
            var done = new List<string>();
            string text = _pending.ToString();
            int start = 0;
            int i = 0;
            while (i < text.Length)
            {
                char c = text[i];
                if (c == '\n')
                {
                    Emit(done, text.Substring(start, i - start));
                    start = i + 1;
                    i++;
                    continue;
                }
                if (!IsStop(c)) { i++; continue; }
                int runStart = i;
                while (i < text.Length && (IsStop(text[i]) || text[i] == '…')) i++;
                while (i < text.Length && IsCloser(text[i])) i++;
                int end = i;
                int next = i;
                while (next < text.Length && (text[next] == ' ' || text[next] == '\t')) next++;
                if (next == end) continue;  // no space after it (yet): "3.5", "e.g", or more to come
                if (next == text.Length) break;  // wait for the next character to decide
                if (text[next] == '\n' || (!char.IsLower(text[next]) && EndsSentence(text, start, runStart, end)))
                {
                    Emit(done, text.Substring(start, end - start));
                    start = next;
                }
                i = next;
            }
            _pending.Remove(0, start);
            return done;
        }

        /// <summary>The text after the last complete sentence, trimmed (null when there is none); clears the splitter.</summary>
        public string Flush()
        {
            string rest = _pending.ToString().Trim();
            _pending.Length = 0;
            return rest.Length > 0 ? rest : null;
        }

        static bool IsStop(char c) { return c == '.' || c == '!' || c == '?'; }

        static bool IsCloser(char c) { return c == '"' || c == '\'' || c == ')' || c == ']' || c == '\u201d' || c == '\u2019' || c == '*'; }

        /// <summary>Is the stop run text[runStart..] a sentence end? Not an ellipsis, abbreviation or initial.</summary>
        static bool EndsSentence(string text, int start, int runStart, int end)
        {
            string run = text.Substring(runStart, end - runStart).TrimEnd('"', '\'', ')', ']', '\u201d', '\u2019', '*');
            if (run.Contains("…") || run.Contains("..")) return false;
            if (run != ".") return true;
            int w = runStart;
            while (w > start && !char.IsWhiteSpace(text[w - 1]) && text[w - 1] != '(' && text[w - 1] != '"') w--;
            string word = text.Substring(w, runStart - w);
            if (word.Length == 1 && char.IsLetter(word[0])) return false;  // an initial
            return !Abbreviations.Contains(word.ToLowerInvariant());
        }

        static void Emit(List<string> done, string sentence)
        {
            sentence = sentence.Trim();
            if (sentence.Length > 0) done.Add(sentence);
        }
    }
}
