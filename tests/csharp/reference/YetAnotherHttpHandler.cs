// Reference declarations, for tests/test_unity_compile.py only (never shipped, never run): the part of
// Cysharp's YetAnotherHttpHandler 1.11 (assembly Cysharp.Net.Http.YetAnotherHttpHandler) that
// GrpcDialogueTransport.cs calls. The real properties are nullable (bool?, string?); mcs has no nullable
// reference types, so string stands for string?. Bodies throw. This is not YetAnotherHttpHandler.
using System;
using System.Net.Http;
using System.Threading;
using System.Threading.Tasks;

namespace Cysharp.Net.Http
{
    public class YetAnotherHttpHandler : HttpMessageHandler
    {
        public bool? Http2Only { get { throw null; } set { } }
        public bool? SkipCertificateVerification { get { throw null; } set { } }
        public string RootCertificates { get { throw null; } set { } }
        public TimeSpan? ConnectTimeout { get { throw null; } set { } }
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) { throw null; }
    }
}
