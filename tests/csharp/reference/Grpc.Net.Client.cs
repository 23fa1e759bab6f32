// Reference declarations, for tests/test_unity_compile.py only (never shipped, never run): the part of
// Grpc.Net.Client's public API (grpc-dotnet 2.67) that GrpcDialogueTransport.cs calls, with the real
// namespaces, names and signatures. Bodies throw. This is not Grpc.Net.Client.
using System;
using System.Net.Http;
using Grpc.Core;

namespace Grpc.Net.Client
{
    public sealed class GrpcChannelOptions
    {
        public HttpMessageHandler HttpHandler { get { throw null; } set { } }
        public HttpClient HttpClient { get { throw null; } set { } }
        public bool DisposeHttpClient { get { throw null; } set { } }
        public int? MaxReceiveMessageSize { get { throw null; } set { } }
    }

    public sealed class GrpcChannel : ChannelBase, IDisposable
    {
        GrpcChannel() : base("") { }
        public static GrpcChannel ForAddress(string address) { throw null; }
        public static GrpcChannel ForAddress(string address, GrpcChannelOptions channelOptions) { throw null; }
        public static GrpcChannel ForAddress(Uri address, GrpcChannelOptions channelOptions) { throw null; }
        public override CallInvoker CreateCallInvoker() { throw null; }
        public void Dispose() { throw null; }
    }
}
