using System;

namespace Neeko.Npc.Unity
{
    /// <summary>
    /// Makes the transport to the server. The gRPC transport (assembly Neeko.Npc.Grpc) compiles only when its
    /// packages are in the project: YetAnotherHttpHandler (com.cysharp.yetanotherhttphandler) and grpc-dotnet
    /// (org.nuget.grpc.net.client). Each asmdef defines NEEKO_NPC_HAS_YAHH and NEEKO_NPC_HAS_GRPC_NET from those
    /// packages (versionDefines); a project that added the gRPC DLLs by hand defines NEEKO_NPC_HAS_GRPC_NET itself
    /// (Player Settings, Scripting Define Symbols). Without them this assembly still compiles, and Create says
    /// which package is missing.
    /// </summary>
    public static class NeekoTransports
    {
#if NEEKO_NPC_HAS_YAHH && NEEKO_NPC_HAS_GRPC_NET
        /// <summary>Null when the gRPC transport can be made; otherwise what to install.</summary>
        public static readonly string Missing = null;
#elif NEEKO_NPC_HAS_YAHH
        public static readonly string Missing = "grpc-dotnet is not installed: add \"org.nuget.grpc.net.client\" (see the package's guide, Install)";
#elif NEEKO_NPC_HAS_GRPC_NET
        public static readonly string Missing = "YetAnotherHttpHandler is not installed: add \"com.cysharp.yetanotherhttphandler\" (see the package's guide, Install)";
#else
        public static readonly string Missing = "YetAnotherHttpHandler and grpc-dotnet are not installed: add \"com.cysharp.yetanotherhttphandler\" and \"org.nuget.grpc.net.client\" (see the package's guide, Install)";
#endif

        /// <summary>The gRPC transport to a server at host:port. Throws InvalidOperationException naming the
        /// missing package when gRPC is not installed.</summary>
        public static IDialogueTransport Create(string address, string token, bool useTls = false, string rootCertificatesPem = null)
        {
#if NEEKO_NPC_HAS_YAHH && NEEKO_NPC_HAS_GRPC_NET
            return new Neeko.Npc.Grpc.GrpcDialogueTransport(address, token, useTls, rootCertificatesPem);
#else
            throw new InvalidOperationException("[neeko-npc] " + Missing);
#endif
        }
    }
}
